"""MLflow helpers (rank 0 only; a no-op elsewhere)."""

from .compare import Comparison, compare, run_compare, select_runs
from .mlflow_run import PARENT_ENV, PIPELINE_ENV, Tracker, is_rank_zero, stage_run, tracking_uri

__all__ = ["PARENT_ENV", "PIPELINE_ENV", "Tracker", "is_rank_zero", "stage_run", "tracking_uri",
           "Comparison", "compare", "run_compare", "select_runs"]
