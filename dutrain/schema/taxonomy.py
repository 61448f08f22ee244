"""The degradation taxonomy v1 of docs/design.md §3, as data.

Names are a public contract (fixed); ranges may be extended. Every value lives on a grid: the
multiples of the key's `step` (Poisson's `peak` uses step 1 below 10 and 5 from 10 on), written
with the grid's decimals. The valid range of a key is the union of its train and OOD ranges.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Mapping

Number = int | float

#: the largest grid coarsening factor (`taxonomy_at`): at 8 some keys keep one train value
#: (airlight 0.8, defocus radius 4.0); at 16 the defocus train range holds none
MAX_GRID_FACTOR = 8

#: the dataset splits, in order (docs/design.md §4); `train` and `ood` also name a key's two
#: value ranges (`ParamSpec.grid_for`)
SPLITS = ("train", "val", "test", "ood")


@dataclass(frozen=True)
class ParamSpec:
    """One physical parameter of a degradation type."""

    key: str
    unit: str
    doc: str
    train: tuple[float, float]
    ood: tuple[float, float]
    step: float
    fine_below: float | None = None  # below this value the grid step is `fine_step`
    fine_step: float | None = None
    period: float | None = None  # angular keys: distance is taken modulo the period
    #: set by `coarsened`: the decimals of the factor-1 grid, which values keep (a coarse grid is
    #: a subset of the fine one, so a coarse value is written exactly as the contract writes it)
    base_decimals: int | None = None

    @property
    def decimals(self) -> int:
        if self.base_decimals is not None:
            return self.base_decimals
        steps = [self.step] + ([self.fine_step] if self.fine_step else [])
        return max(_decimals_of(s) for s in steps)

    @property
    def integer(self) -> bool:
        return self.decimals == 0

    @property
    def valid(self) -> tuple[float, float]:
        return (min(self.train[0], self.ood[0]), max(self.train[1], self.ood[1]))

    @property
    def width(self) -> float:
        """Scale of the value error: the width of the train range (docs/design.md §6)."""
        return self.train[1] - self.train[0]

    def step_at(self, v: float) -> float:
        """The grid step around `v` (Poisson's peak is finer below 10 at factor 1)."""
        if self.fine_below is not None and v < self.fine_below:
            return float(self.fine_step)
        return self.step

    def _fmt(self, v: float) -> Number:
        v = round(v, self.decimals)
        return int(round(v)) if self.integer else float(v) + 0.0  # +0.0 turns -0.0 into 0.0

    def snap(self, value: float, clamp: bool = True) -> Number:
        """Nearest grid value (round half to even), clamped into the valid range by default."""
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"{self.key}: value {value!r} is not a finite number")
        lo, hi = self.valid
        if clamp:
            v = min(max(v, lo), hi)
        step = self.step_at(v)
        snapped = round(v / step) * step
        if self.fine_below is not None and v < self.fine_below <= snapped:
            snapped = self.fine_below
        out = self._fmt(snapped)
        if clamp and not (lo - 1e-9 <= out <= hi + 1e-9):  # the nearest grid point left the range
            out = self._fmt(snapped - step if out > hi else snapped + step)
        return out

    def on_grid(self, value: float) -> bool:
        v = float(value)
        if not math.isfinite(v):
            return False
        step = self.step_at(v)
        k = v / step
        return abs(k - round(k)) < 1e-6

    def in_range(self, value: float) -> bool:
        lo, hi = self.valid
        return lo - 1e-9 <= float(value) <= hi + 1e-9

    def grid(self, lo: float | None = None, hi: float | None = None) -> list[Number]:
        """All grid values in [lo, hi] (default: the valid range), ascending."""
        vlo, vhi = self.valid
        lo = vlo if lo is None else lo
        hi = vhi if hi is None else hi
        out: list[Number] = []
        v = self.snap(lo, clamp=False)
        if v < lo - 1e-9:
            v = self._fmt(v + self.step_at(v))
        while v <= hi + 1e-9:
            out.append(v)
            v = self._fmt(v + self.step_at(v))
        return out

    def grid_for(self, split: str) -> list[Number]:
        """Grid values to sample for a split: `train` range, or `ood` values outside it."""
        if split == "ood":
            ood = self.grid(*self.ood)
            outside = [v for v in ood if not (self.train[0] <= v <= self.train[1])]
            return outside or ood
        return self.grid(*self.train)

    def format(self, value: Number) -> str:
        """The value as written in canonical JSON (grid decimals; integers for integer steps)."""
        v = self._fmt(float(value))
        return str(v) if self.integer else f"{v:.{self.decimals}f}"

    def coarsened(self, factor: int) -> ParamSpec:
        """This key on the grid `factor` times coarser: the multiples of factor · step (a subset
        of today's grid, written with its decimals). Poisson's finer step below 10 is dropped
        for factor > 1 (the coarse steps would not meet at 10)."""
        if check_grid_factor(factor) == 1:
            return self
        return dataclasses.replace(self, step=round(self.step * factor, 10), fine_below=None,
                                   fine_step=None, base_decimals=self.decimals)

    def distance(self, a: float, b: float) -> float:
        d = abs(float(a) - float(b))
        if self.period:
            d = d % self.period
            d = min(d, self.period - d)
        return d


@dataclass(frozen=True)
class DegradationSpec:
    """One degradation type: its stage in the chain and its parameters in canonical order."""

    type: str
    stage: int
    stage_name: str
    doc: str
    params: tuple[ParamSpec, ...]
    #: (key, +1 or -1): the parameter that sets how visible the degradation is, and whether a
    #: larger value makes it stronger (+1) or weaker (-1); read by `severity`
    strength: tuple[str, int]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(p.key for p in self.params)

    def severity(self, params: Mapping[str, float]) -> float:
        """Position of `params[strength key]` in its train range, 0 = mildest, 1 = strongest
        (clipped: OOD values count as 0 or 1)."""
        key, sign = self.strength
        lo, hi = self.param(key).train
        u = (float(params[key]) - lo) / (hi - lo)
        return min(1.0, max(0.0, u if sign > 0 else 1.0 - u))

    def param(self, key: str) -> ParamSpec:
        for p in self.params:
            if p.key == key:
                return p
        raise KeyError(key)

    def coarsened(self, factor: int) -> DegradationSpec:
        if check_grid_factor(factor) == 1:
            return self
        return dataclasses.replace(self, params=tuple(p.coarsened(factor) for p in self.params))


def _decimals_of(step: float) -> int:
    s = f"{step:.10f}".rstrip("0").rstrip(".")
    return len(s.split(".")[1]) if "." in s else 0


P = ParamSpec
_TYPES = [
    DegradationSpec("haze", 1, "scene", "Atmospheric scattering with depth 1 - y/(H-1).", (
        P("beta", "1/depth", "scattering coefficient per unit depth", (0.2, 2.5), (2.5, 3.5), 0.1),
        P("airlight", "intensity", "atmospheric light A (0-1)", (0.6, 0.95), (0.95, 1.0), 0.05),
    ), strength=("beta", 1)),
    DegradationSpec("rain", 2, "scene", "Bright anti-aliased line streaks.", (
        P("density", "streaks/10k px", "streaks per 10,000 pixels", (1, 20), (20, 40), 1),
        P("length", "px", "streak length", (5, 30), (30, 50), 1),
        P("angle", "deg", "degrees from vertical", (-30, 30), (-45, 45), 5),
    ), strength=("density", 1)),
    DegradationSpec("gaussian_blur", 3, "optics", "Separable Gaussian PSF.", (
        P("sigma", "px", "standard deviation of the PSF", (0.4, 4.0), (4.0, 6.0), 0.1),
    ), strength=("sigma", 1)),
    DegradationSpec("motion_blur", 3, "optics", "Linear motion PSF.", (
        P("length", "px", "length of the motion path", (3, 25), (25, 41), 1),
        P("angle", "deg", "direction, degrees in [0, 180), 0 = horizontal", (0, 175), (0, 175), 5,
          period=180.0),
    ), strength=("length", 1)),
    DegradationSpec("defocus_blur", 3, "optics", "Anti-aliased disk PSF.", (
        P("radius", "px", "disk radius", (1.0, 6.0), (6.0, 9.0), 0.5),
    ), strength=("radius", 1)),
    DegradationSpec("low_light", 4, "exposure", "I = exposure * J**gamma.", (
        P("exposure", "gain", "linear gain", (0.15, 0.8), (0.05, 0.15), 0.05),
        P("gamma", "exponent", "tone-curve exponent", (1.2, 3.0), (3.0, 4.0), 0.1),
    ), strength=("exposure", -1)),
    DegradationSpec("downsample", 5, "sampling", "Bicubic down then up to the original size.", (
        P("scale", "factor", "linear down-sampling factor", (0.25, 0.9), (0.15, 0.25), 0.05),
    ), strength=("scale", -1)),
    DegradationSpec("gaussian_noise", 6, "sensor", "Additive white Gaussian noise.", (
        P("sigma", "DN (0-255)", "noise standard deviation on the 0-255 scale", (2, 50), (50, 75),
          1),
    ), strength=("sigma", 1)),
    DegradationSpec("poisson_noise", 6, "sensor", "Photon shot noise.", (
        P("peak", "photons", "photon count at white", (10, 200), (3, 10), 5, fine_below=10,
          fine_step=1),
    ), strength=("peak", -1)),
    DegradationSpec("jpeg", 7, "codec", "Pillow/libjpeg JPEG round trip.", (
        P("quality", "libjpeg quality", "JPEG quality factor", (15, 95), (5, 15), 1),
    ), strength=("quality", -1)),
]
del P

#: type name -> spec, in stage order (the canonical order of a chain).
TAXONOMY: dict[str, DegradationSpec] = {d.type: d for d in sorted(_TYPES, key=lambda d: d.stage)}
TYPES: tuple[str, ...] = tuple(TAXONOMY)
STAGE_NAMES: dict[int, str] = {d.stage: d.stage_name for d in _TYPES}
#: the pseudo-type used in metrics for an empty chain
CLEAN = "clean"


def check_grid_factor(factor: object) -> int:
    """`factor` as a grid coarsening factor: an integer in [1, MAX_GRID_FACTOR]."""
    if isinstance(factor, bool) or not isinstance(factor, int) \
            or not 1 <= factor <= MAX_GRID_FACTOR:
        raise ValueError(f"grid factor must be an integer from 1 to {MAX_GRID_FACTOR}, "
                         f"got {factor!r}")
    return factor


@functools.lru_cache(maxsize=None)
def taxonomy_at(factor: int = 1) -> dict[str, DegradationSpec]:
    """The taxonomy with every key's grid `factor` times coarser (docs/design.md §3, "Grid
    factor"); factor 1 is `TAXONOMY` itself. Types, keys and valid ranges do not change."""
    if check_grid_factor(factor) == 1:
        return TAXONOMY
    return {t: s.coarsened(factor) for t, s in TAXONOMY.items()}


def spec(type_name: str) -> DegradationSpec:
    try:
        return TAXONOMY[type_name]
    except KeyError:
        raise KeyError(f"unknown degradation type {type_name!r}; "
                       f"known: {', '.join(TYPES)}") from None


def param_spec(type_name: str, key: str) -> ParamSpec:
    return spec(type_name).param(key)


def all_keys() -> list[str]:
    """`type.key` names of every parameter, in canonical order."""
    return [f"{d.type}.{p.key}" for d in TAXONOMY.values() for p in d.params]
