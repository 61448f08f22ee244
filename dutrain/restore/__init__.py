"""Restoration driven by an annotation (docs/design.md §2): the structured answer as a controller.

`restore(image_uint8_hwc, annotation)` runs the classical plan (`classical`); `control(...)` the
same plan step by step under confidence thresholds and a no-reference check (`controller`); the
diffusion null-space backend lives in `ddnm` (imports torch and diffusers only when used).
"""

from .classical import INVERSES, PlanStep, plan, restore, run_plan
from .controller import Outcome, calibrate_thresholds, check_step, control

__all__ = ["INVERSES", "Outcome", "PlanStep", "calibrate_thresholds", "check_step", "control",
           "plan", "restore", "run_plan"]
