"""The registry of operators, the chain applier and the chain sampler.

Re-applying an annotation (a contract for outside programs):
1. the image is converted by `_image.to_rgb_uint8` and to float32 ``J = uint8 / 255``;
2. the annotation is canonicalized with ``dutrain.schema.canonicalize(annotation, snap=True)``
   (stage order, values snapped to the grid);
3. each operator runs in stage order on float32 in [0, 1]; every operator's output is clipped to
   [0, 1]; an operator that draws random numbers (rain: stage 2, noise: stage 6) uses its own
   generator ``np.random.default_rng([seed, stage])``, so its draws depend only on the seed and
   its stage, never on which other operators are in the chain;
4. the result is quantized once, ``rint(clip(I, 0, 1) * 255)`` (half to even); a chain that ends
   in ``jpeg`` is quantized right before the encoder and the decoded bytes are the result.
The physics of each operator is written in its module's docstring (docs/design.md §3).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from dutrain.schema import TAXONOMY, TYPES, Annotation, canonicalize, taxonomy_at

from ._image import to_float, to_rgb_uint8, to_uint8
from .blur import defocus_blur, gaussian_blur, motion_blur
from .codec import jpeg
from .noise import gaussian_noise, poisson_noise
from .photometric import low_light
from .sampling import downsample
from .scene import haze, rain

Operator = Callable[[np.ndarray, dict[str, Any], np.random.Generator], np.ndarray]

#: type name -> operator ``op(img_float32_hwc_in_0_1, params, rng) -> img_float32``
REGISTRY: dict[str, Operator] = {
    "haze": haze, "rain": rain, "gaussian_blur": gaussian_blur, "motion_blur": motion_blur,
    "defocus_blur": defocus_blur, "low_light": low_light, "downsample": downsample,
    "gaussian_noise": gaussian_noise, "poisson_noise": poisson_noise, "jpeg": jpeg,
}
assert tuple(REGISTRY) == TYPES, "registry must cover the taxonomy in stage order"

#: default relative weight of each type when a chain draws its next degradation: every stage
#: equally likely, shared equally among the types of a stage.
DEFAULT_TYPE_PROBS: dict[str, float] = {
    t: 1.0 / sum(1 for s in TAXONOMY.values() if s.stage == TAXONOMY[t].stage) for t in TYPES
}

#: the value ranges a chain is drawn from (`ParamSpec.grid_for`), the `split` of `sample_chain`
RANGES = ("train", "ood")


def operator_rng(seed: int, stage: int) -> np.random.Generator:
    return np.random.default_rng([seed, stage])


def _check_seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    return int(seed)


def apply_operator(image: np.ndarray, type_name: str, params: Mapping[str, Any],
                   rng: np.random.Generator) -> np.ndarray:
    """Apply one operator to a float32 H x W x 3 image in [0, 1]; params are snapped first."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.float32 and image.ndim == 3
            and image.shape[2] == 3):
        raise ValueError("apply_operator needs a float32 HxWx3 image in [0, 1]; got "
                         f"{getattr(image, 'dtype', type(image).__name__)} "
                         f"{getattr(image, 'shape', '')}")
    d = canonicalize({"degradations": [{"type": type_name, "params": dict(params)}]}, snap=True)
    entry = d["degradations"][0]
    return np.clip(REGISTRY[entry["type"]](image, entry["params"], rng), 0, 1).astype(np.float32)


def apply_chain(image_uint8_hwc: np.ndarray, annotation: Any, seed: int) -> np.ndarray:
    """Apply `annotation` to the image; same inputs give the same bytes (see module doc)."""
    seed = _check_seed(seed)
    img = to_rgb_uint8(image_uint8_hwc)
    ann = canonicalize(annotation, snap=True)
    x = to_float(img)
    for d in ann["degradations"]:
        stage = TAXONOMY[d["type"]].stage
        x = np.clip(REGISTRY[d["type"]](x, d["params"], operator_rng(seed, stage)), 0, 1)
    return to_uint8(x)


def _resolve_probs(type_probs: Mapping[str, float] | None) -> dict[str, float]:
    if type_probs is None:
        return dict(DEFAULT_TYPE_PROBS)
    unknown = [t for t in type_probs if t not in TAXONOMY]
    if unknown:
        raise ValueError(f"type_probs: unknown type(s) {unknown}; allowed: {', '.join(TYPES)}")
    bad = {t: p for t, p in type_probs.items() if not (np.isfinite(p) and p >= 0)}
    if bad:
        raise ValueError(f"type_probs: weights must be finite and >= 0; got {bad}")
    probs = {t: float(type_probs.get(t, 0.0)) for t in TYPES}
    if sum(probs.values()) <= 0:
        raise ValueError("type_probs: at least one type needs a positive weight")
    return probs


def _draw_types(rng: np.random.Generator, probs: Mapping[str, float],
                max_degradations: int) -> list[str]:
    """1…max_degradations types by `probs` among free stages, in stage order."""
    n = int(rng.integers(1, max_degradations + 1))
    chosen: list[str] = []
    for _ in range(n):
        used = {TAXONOMY[t].stage for t in chosen}
        cands = [t for t in TYPES if probs[t] > 0 and TAXONOMY[t].stage not in used]
        if not cands:
            break
        w = np.array([probs[t] for t in cands])
        chosen.append(cands[int(rng.choice(len(cands), p=w / w.sum()))])
    return sorted(chosen, key=lambda t: TAXONOMY[t].stage)


def sample_chain(rng: np.random.Generator, split: str = "train", clean_fraction: float = 0.1,
                 type_probs: Mapping[str, float] | None = None,
                 max_degradations: int = 3, grid_factor: int = 1) -> Annotation:
    """Draw a random canonical annotation.

    - ``train``: clean (empty chain) with probability `clean_fraction`; otherwise n ~ uniform
      {1..max_degradations} draws, each picking a type by `type_probs` (relative weights; types
      left out get 0; default `DEFAULT_TYPE_PROBS`) among types whose stage is still free, so a
      chain holds at most one type per stage (fewer if the weighted types run out). Values are
      uniform on the key's train grid (``ParamSpec.grid_for("train")``).
    - ``ood``: never clean (a clean image has nothing out of distribution); one key of the chain,
      chosen uniformly among keys whose OOD grid lies outside the train range, takes a value
      uniform on that OOD grid; the other keys are drawn from their train grids.
    - `grid_factor`: values are drawn from the grids that many times coarser
      (`dutrain.schema.taxonomy_at`); at factor 1 (the contract's grid) the draws are today's.
      Where a coarse OOD grid holds nothing outside the train range (factor 8: airlight, scale,
      peak), an OOD chain made only of such types is drawn again.
    """
    if split not in RANGES:
        raise ValueError(f"split must be one of {RANGES}; got {split!r}")
    if not 0.0 <= float(clean_fraction) <= 1.0:
        raise ValueError(f"clean_fraction must be in [0, 1]; got {clean_fraction!r}")
    if not isinstance(max_degradations, (int, np.integer)) or not 0 <= max_degradations <= len(set(
            s.stage for s in TAXONOMY.values())):
        raise ValueError(f"max_degradations must be an integer in [0, 7]; got {max_degradations!r}")
    if split == "ood" and max_degradations < 1:
        raise ValueError("split 'ood' needs max_degradations >= 1")
    probs = _resolve_probs(type_probs)
    tax = taxonomy_at(grid_factor)
    if split == "train" and (max_degradations == 0 or rng.random() < clean_fraction):
        return {"degradations": []}
    forced: tuple[str, str] | None = None
    for _ in range(1000):
        chosen = _draw_types(rng, probs, max_degradations)
        if split != "ood":
            break
        eligible = [(t, p.key) for t in chosen for p in tax[t].params
                    if any(not (p.train[0] <= v <= p.train[1]) for v in p.grid_for("ood"))]
        if eligible:
            forced = eligible[int(rng.integers(len(eligible)))]
            break
    else:
        raise ValueError(f"no type of type_probs has an OOD value on the grid at factor "
                         f"{grid_factor}")
    out = []
    for t in chosen:
        params = {}
        for p in tax[t].params:
            grid = p.grid_for("ood" if (t, p.key) == forced else "train")
            params[p.key] = grid[int(rng.integers(len(grid)))]
        out.append({"type": t, "params": params})
    return canonicalize({"degradations": out})
