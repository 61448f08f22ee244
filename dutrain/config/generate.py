"""Config of `dutrain generate`: clean sources → degraded pairs with exact annotations (Parquet)."""

from __future__ import annotations

from dutrain.data.photos import is_photo_spec, spec_group
from dutrain.degrade.procedural import parse_spec
from dutrain.schema import MAX_GRID_FACTOR, TYPES

from .common import RayConfig, StorageConfig, TrackingConfig
from .core import ConfigError, configclass, option


@configclass
class GenerateConfig:
    output: str = option("runs/data/demo", "dataset root: a local directory or s3://bucket/prefix")
    sources: list[str] = option(default_factory=lambda: ["builtin"], doc=(
        "clean images: local directories (recursive), s3://bucket/prefix, a .txt file listing "
        "paths/URIs (one per line), 'builtin' (scikit-image's photos, offline), 'photos' or "
        "'photos:GROUP' (real photographs installed by `make venv`, dutrain/data/photos.json; a "
        "folder named photos needs ./photos) or 'dead_leaves:N' (N procedural images, always in "
        "the train split)"))
    require_photos: bool = option(True, "false: photos of a 'photos' source that are not "
                                        "installed are left out with a warning (a changed file "
                                        "is always an error)")
    samples: int = option(2000, "total rows to write (all splits, ood included)", min=1)
    image_size: int = option(128, "side of the square crops, px (smaller sources are rejected)",
                             min=16, max=8192)
    seed: int = option(0, "seed of the whole dataset (crops, chains, noise)", min=0)
    ood_fraction: float = option(0.1, "share of rows in the 'ood' split (one key out of its train "
                                      "range; drawn from test-split sources)", min=0.0, max=1.0)
    clean_fraction: float = option(0.1, "share of in-distribution rows with no degradation",
                                   min=0.0, max=1.0)
    val_fraction: float = option(0.1, "share of sources (by hash of source_id) in 'val'",
                                 min=0.0, max=1.0)
    test_fraction: float = option(0.2, "share of sources (by hash of source_id) in 'test'",
                                  min=0.0, max=1.0)
    workers: int | None = option(None, "parallel degradation tasks (null: every CPU of the Ray "
                                       "cluster)", min=1)
    variants_per_crop: int = option(4, "degraded variants of each clean crop (the clean PNG is "
                                       "encoded once per crop)", min=1, max=64)
    rows_per_shard: int = option(256, "rows per Parquet file (the unit of work and of resume)",
                                 min=1)
    max_degradations: int = option(3, "most degradations in one chain (1..7)", min=1, max=7)
    grid_factor: int = option(1, "draw every value from its key's grid this many times coarser "
                                 "(1: the contract's grid; a coarse value is still a valid "
                                 "annotation)", min=1, max=MAX_GRID_FACTOR)
    type_probs: dict[str, float] | None = option(None, "relative weight of each degradation type "
                                                       "(null: every stage equally likely)")
    png_level: int = option(1, "zlib level of the PNGs (1: fastest with real compression; see "
                               "docs/generate.md)", min=0, max=9)
    min_crop_std: float = option(0.02, "re-draw a crop (up to 8 tries) whose luma std (0-1) is "
                                       "below this, so flat crops do not hide degradations",
                                 min=0.0, max=0.5)
    max_pixels: int = option(100_000_000, "reject sources with more pixels (decompression-bomb "
                                          "guard)", min=1)
    overwrite: bool = option(False, "replace a finished dataset at `output`")
    progress: bool = option(True, "show a progress bar")
    preview_pairs: int = option(12, "clean/degraded pairs in preview.png", min=0, max=64)
    storage: StorageConfig = option(default_factory=StorageConfig)
    tracking: TrackingConfig = option(default_factory=TrackingConfig)
    ray: RayConfig = option(default_factory=RayConfig)

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("bad value for 'sources': [] (allowed: a non-empty list of local "
                              "directories, s3://bucket/prefix, .txt lists, 'builtin' or "
                              "'dead_leaves:N')")
        for spec in self.sources:
            try:
                parse_spec(str(spec))
                if is_photo_spec(str(spec)):  # the photos module's one check of a group name
                    spec_group(str(spec))
            except ValueError as exc:  # a PhotoError is one
                raise ConfigError(f"bad value for 'sources': {exc}") from None
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(f"bad values for 'val_fraction' + 'test_fraction': "
                              f"{self.val_fraction} + {self.test_fraction} (allowed: sum < 1, "
                              f"so some sources are left for train)")
        if self.ood_fraction > 0 and self.test_fraction <= 0:
            raise ConfigError(f"bad value for 'ood_fraction': {self.ood_fraction} with "
                              f"test_fraction 0 (ood rows come from test-split sources; allowed: "
                              f"ood_fraction 0 or test_fraction > 0)")
        if self.type_probs is not None:
            bad = [t for t in self.type_probs if t not in TYPES]
            if bad:
                raise ConfigError(f"bad key(s) in 'type_probs': {bad} "
                                  f"(allowed: {', '.join(TYPES)})")
            if any(not (v >= 0) for v in self.type_probs.values()) or \
                    sum(self.type_probs.values()) <= 0:
                raise ConfigError(f"bad value for 'type_probs': {dict(self.type_probs)} (allowed: "
                                  f"weights >= 0, at least one > 0)")
