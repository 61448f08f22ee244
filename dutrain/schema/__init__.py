"""Answer schema: the taxonomy as data, canonical annotations and the model's text format."""

from .annotation import (
    Annotation,
    AnnotationError,
    Degradation,
    canonical_json,
    canonicalize,
    check_annotation,
    clean_annotation,
    is_clean,
    snap_annotation,
    types_of,
)
from .answer import ParseResult, answer_json_schema, parse_answer, render_answer
from .taxonomy import (
    CLEAN,
    MAX_GRID_FACTOR,
    SPLITS,
    STAGE_NAMES,
    TAXONOMY,
    TYPES,
    DegradationSpec,
    ParamSpec,
    all_keys,
    check_grid_factor,
    param_spec,
    spec,
    taxonomy_at,
)

__all__ = [
    "Annotation", "AnnotationError", "Degradation", "canonical_json", "canonicalize",
    "check_annotation", "clean_annotation", "is_clean", "types_of", "ParseResult",
    "answer_json_schema", "parse_answer", "render_answer", "CLEAN", "SPLITS", "STAGE_NAMES",
    "TAXONOMY", "TYPES",
    "DegradationSpec", "ParamSpec", "all_keys", "param_spec", "spec", "MAX_GRID_FACTOR",
    "check_grid_factor", "taxonomy_at", "snap_annotation",
]
