"""Physical degradation library (docs/design.md §3): operators, registry, chain sampler, applier.

`apply_chain(image_uint8_hwc, annotation, seed)` is the public, deterministic entry point; the
conventions an outside program needs to re-apply an annotation are in `chain` and in each
operator module's docstring.
"""

from ._image import LUMA_WEIGHTS, to_float, to_rgb_uint8, to_uint8
from .chain import (
    DEFAULT_TYPE_PROBS,
    REGISTRY,
    apply_chain,
    apply_operator,
    operator_rng,
    sample_chain,
)
from .cues import CUE_NAMES, measure_cues
from .reasoning import stated_cues, tool_line, write_reasoning

__all__ = [
    "CUE_NAMES", "DEFAULT_TYPE_PROBS", "LUMA_WEIGHTS", "REGISTRY", "apply_chain", "apply_operator",
    "measure_cues",
    "operator_rng", "sample_chain", "stated_cues", "to_float", "to_rgb_uint8", "to_uint8",
    "tool_line", "write_reasoning",
]
