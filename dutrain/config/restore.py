"""`dutrain restore`: restore images with the physics an annotation (true or predicted) names."""

from __future__ import annotations

from dutrain.schema import SPLITS

from .common import GenerationConfig, RayConfig, StorageConfig, TrackingConfig
from .core import ConfigError, configclass, option
from .eval import BASELINES
from .openai import PREFIX as OPENAI_PREFIX
from .openai import OpenAIConfig, check_spec


@configclass
class BackendConfig:
    """How an annotation is turned into a restored image."""

    backend: str = option("classical", "classical: one documented inverse operator per stage; "
                                       "ddnm: a diffusion model's null-space for blur, "
                                       "downsample and noise, classical for the rest",
                          choices=("classical", "ddnm"))
    model: str | None = option(None, "ddnm: a diffusers UNet2DModel checkpoint (safetensors), a "
                                     "local directory or s3:// prefix; never fetched from a hub")
    steps: int = option(50, "ddnm: reverse diffusion steps (DDIM timesteps)", min=1, max=1000)
    eta: float = option(0.85, "ddnm: share of fresh noise re-injected per step (0 = DDIM)",
                        min=0, max=1)
    eps: float = option(0.05, "ddnm: blur frequencies with |PSF spectrum| < eps are left to the "
                              "model (the pseudo-inverse's regularisation)", min=1e-6, max=0.99)
    device: str = option("auto", "ddnm: torch device", choices=("auto", "cpu", "cuda"))
    seed: int = option(0, "sampling seed (ddnm; the judge's random-valued steps)", min=0)
    plan: str = option("plain", "plain: apply every predicted step; controlled: skip steps whose "
                                "confidence is below a threshold calibrated on the val split "
                                "and roll back steps the classical estimators reject "
                                "(docs/restore.md)", choices=("plain", "controlled"))
    thresholds: str | None = option(None, "controlled: a thresholds.json of an earlier run "
                                          "(default: calibrate on the val split of 'calibration' "
                                          "or the input dataset)")
    diagnose: bool = option(False, "on a dataset split with a predictor: also restore with the "
                                   "true types + predicted values (oracle_type) and the "
                                   "predicted types + true values (oracle_values), so the gap "
                                   "to the oracle is attributed to the type, the values or the "
                                   "operator (docs/restore.md)")
    max_alternatives: int = option(2, "controlled: when the check rolls a step back, try up to "
                                      "this many alternatives per image (the next most likely "
                                      "type of the step's stage, or the classical estimators' "
                                      "values), each checked again; 0 = none. No extra model "
                                      "call: the ranking comes from the one answer and reading",
                                   min=0, max=16)
    calibration_limit: int = option(300, "controlled: val rows the thresholds are calibrated on",
                                    min=1)
    judge: str | None = option(None, "controlled: a judge.json of an earlier run (default: fit "
                                     "the judge on 'judge_rows' train rows)")
    judge_rows: int = option(400, "controlled: train rows of 'calibration' (or the input dataset) "
                                  "the judge learns from (every restoring step applied to each, "
                                  "its PSNR gain recorded); 0 = no judge, the hand rules only",
                             min=0)
    judge_draws: int = option(2, "controlled: random-valued steps per type and train row besides "
                                 "the classical estimators' values (the judge must see wrong "
                                 "steps)", min=0, max=16)
    judge_cache: bool = option(True, "controlled: reuse the records of an earlier judge fitted on "
                                     "the same rows with the same settings and code "
                                     "($DUTRAIN_CACHE/judge, default ~/.cache/dutrain/judge) "
                                     "instead of collecting them again")
    judge_quantile: float = option(0.2, "controlled: the quantile of a step's PSNR gain the judge "
                                        "predicts (below 0.5: cautious, a step must gain even "
                                        "where the judge errs against it)", min=0.01, max=0.99)
    judge_margin: float = option(0.5, "controlled: keep a step only if the judge predicts a PSNR "
                                      "gain above this many dB")

    def validate(self) -> None:
        if self.backend == "ddnm" and not self.model:
            raise ConfigError("'restore.backend=ddnm' needs 'restore.model' (a local diffusers "
                              "UNet2DModel directory or an s3:// prefix)")
        if self.plan == "controlled" and self.backend != "classical":
            raise ConfigError("'restore.plan=controlled' guards the classical operators: use "
                              "'restore.backend=classical'")


@configclass
class RestoreConfig:
    input: str | None = option(None, "an image file, a folder of images, or a dataset root "
                                     "(local or s3://) together with 'split'")
    split: str | None = option(None, "with a dataset root: the split to restore (then PSNR/SSIM "
                                     "against clean for identity, oracle and predicted)",
                               choices=SPLITS)
    annotation: str | None = option(None, "the annotation(s) to restore with: a .json file (one "
                                          "annotation for every image) or a .jsonl file of "
                                          "{\"image\"|\"sample_id\": ..., \"annotation\"|"
                                          "\"completion\": ...} lines")
    model: str | None = option(None, "predict the annotation with this VLM (checkpoint dir, "
                                     "s3:// URI, hub id or 'tiny'), 'baseline:classical' / "
                                     "'baseline:prior', or 'openai:BASE_URL[#MODEL]' (a VLM "
                                     "behind an OpenAI-compatible endpoint; see openai.*)")
    calibration: str | None = option(None, "dataset root whose train split calibrates a "
                                           "baseline (default: the input dataset)")
    calibration_samples: int = option(400, "train rows used to calibrate the classical "
                                           "baseline", min=10)
    output: str = option("runs/restore", "folder for restored images, grid.png, "
                                         "annotations.jsonl and (on a split) metrics.json, "
                                         "report.md")
    limit: int | None = option(None, "at most this many images (dataset: a fixed subset "
                                     "spread over the split; folder: first by name)", min=1)
    grid: int = option(8, "rows in the before/after grid", min=1, max=64)
    restore: BackendConfig = option(default_factory=BackendConfig, doc="restoration backend")
    generation: GenerationConfig = option(default_factory=GenerationConfig,
                                          doc="VLM serving when 'model' is a VLM")
    openai: OpenAIConfig = option(default_factory=OpenAIConfig,
                                  doc="OpenAI-compatible endpoint (model=openai:...)")
    tracking: TrackingConfig = option(default_factory=TrackingConfig, doc="MLflow")
    storage: StorageConfig = option(default_factory=StorageConfig, doc="S3 settings")
    ray: RayConfig = option(default_factory=RayConfig, doc="Ray cluster (VLM workers)")

    def validate(self) -> None:
        if self.annotation is not None and self.model is not None:
            raise ConfigError("set one of 'annotation' (given annotations) and 'model' (predict "
                              "them), not both")
        if self.model and self.model.startswith("baseline:") and self.model not in BASELINES:
            raise ConfigError(f"bad value for 'model': {self.model!r} (allowed baselines: "
                              f"{', '.join(BASELINES)})")
        if self.model and self.model.startswith(OPENAI_PREFIX):
            check_spec("model", self.model)
        if self.restore.plan == "controlled" and (
                not self.model or self.model == "baseline:prior"
                or self.model.startswith(OPENAI_PREFIX)):
            raise ConfigError("'restore.plan=controlled' needs a per-step confidence: "
                              "'model=baseline:classical' or a VLM served by vLLM (its token "
                              "log-probabilities); not given annotations, the prior or an "
                              "openai: endpoint")
        if self.restore.plan == "controlled" and self.split is None and self.calibration is None:
            raise ConfigError("'restore.plan=controlled' checks steps with the classical "
                              "estimators calibrated on a dataset's train split: set "
                              "'calibration' to a dataset root (or restore a dataset split)")
        if self.restore.diagnose and self.split is None:
            raise ConfigError("'restore.diagnose=true' compares against the true annotations of "
                              "a dataset split: set 'split' (and 'input' to a dataset root)")
        if (self.model or "").startswith("baseline:") and self.split is None \
                and self.calibration is None:
            raise ConfigError(f"'model={self.model}' is calibrated on a dataset's train split: set "
                              "'calibration' to a dataset root (or restore a dataset split)")

    def check_inputs(self) -> None:
        """What a run needs beyond a valid config (a pipeline fills these in after loading)."""
        if not self.input:
            raise ConfigError("missing value for 'input' (allowed: an image file, a folder of "
                              "images, or a dataset root with split=...)")
        if self.split is None and self.annotation is None and self.model is None:
            raise ConfigError("set 'annotation' (a .json/.jsonl file) or 'model' (a VLM or "
                              "baseline that predicts it); on a dataset split with neither, only "
                              "identity and oracle are reported")
