"""Restoration driven by an annotation (docs/design.md §2): the structured answer as a controller.

`restore(image_uint8_hwc, annotation)` runs the classical plan (`classical`); the diffusion
null-space backend lives in `ddnm` (imports torch and diffusers only when used).
"""

from .classical import INVERSES, PlanStep, plan, restore, run_plan

__all__ = ["INVERSES", "PlanStep", "plan", "restore", "run_plan"]
