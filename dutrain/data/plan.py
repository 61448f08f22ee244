"""The work plan of `generate`, computed on the driver from (config, seed, sorted sources) only.

Pure functions: the same inputs give the same splits, crops, seeds and shards, whatever the
number of workers, so a restarted run rebuilds exactly the plan it was interrupted in.

- split: a source's split comes from a hash of its `source_id` alone (not of the seed, not of
  the other sources): u = first 8 bytes of sha256(source_id) / 2**64; u < test_fraction → test,
  u < test_fraction + val_fraction → val, else train. Adding images never moves a source.
  (Procedural sources are always train: `generate` sets that, `sources.train_only`.)
- ood: `ood` rows are extra crops of test-split sources with one key drawn outside its train
  range, so an ood image is never seen in training and neither is its value.
- crops: the in-distribution rows (samples − ood rows) are cut into crops of
  `variants_per_crop` rows; crops go round-robin to the sources in a seeded order; ood crops
  likewise to the test sources and are numbered after the source's other crops.
- seeds: every random draw has its own seed, sha256 of (seed, purpose, id) → int63.
- shards: crops sorted by (source_id, crop) are cut greedily into shards of at least
  `rows_per_shard` rows (a crop never spans two shards); shard k is file `part-{k:05d}.parquet`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

from dutrain.errors import UserError


class PlanError(UserError, ValueError):
    """The sources cannot give the rows asked for (the message says what to change)."""


def _hash_u64(*parts: object) -> int:
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big")


def derive_seed(seed: int, purpose: str, key: str) -> int:
    """A non-negative int63 for one random draw (stable across Python versions and machines)."""
    return _hash_u64(seed, purpose, key) >> 1


def split_of(source_id: str, val_fraction: float, test_fraction: float) -> str:
    u = _hash_u64("split", source_id) / 2.0 ** 64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def sample_id(source_id: str, crop: int, variant: int) -> str:
    return f"{source_id}:{crop}:{variant}"


@dataclass(frozen=True)
class Crop:
    source_id: str
    crop: int  # index of the crop within its source
    split: str  # train / val / test / ood
    variants: int  # rows cut from this crop

    def sample_ids(self) -> list[str]:
        return [sample_id(self.source_id, self.crop, v) for v in range(self.variants)]


def _deal(order: Sequence[str], rows: int, variants: int, split_of_source: dict[str, str] | None,
          counters: dict[str, int], fixed_split: str | None) -> list[Crop]:
    out = []
    n_crops = math.ceil(rows / variants) if rows else 0
    for c in range(n_crops):
        sid = order[c % len(order)]
        k = counters.get(sid, 0)
        counters[sid] = k + 1
        n = variants if c < n_crops - 1 else rows - variants * (n_crops - 1)
        out.append(Crop(sid, k, fixed_split or split_of_source[sid], n))  # type: ignore[index]
    return out


def ood_rows(samples: int, ood_fraction: float) -> int:
    return int(round(samples * ood_fraction))


def plan_crops(splits: dict[str, str], samples: int, ood_fraction: float, variants: int,
               seed: int) -> list[Crop]:
    """Crops for `samples` rows from sources {source_id: split}, sorted by (source_id, crop)."""
    if not splits:
        raise PlanError("no usable source image (every one was rejected: see the reasons above)")
    n_ood = ood_rows(samples, ood_fraction)
    order = sorted(splits, key=lambda s: (derive_seed(seed, "order", s), s))
    test_order = [s for s in order if splits[s] == "test"]
    if n_ood and not test_order:
        raise PlanError(f"ood_fraction {ood_fraction} needs a test-split source, and none of the "
                        f"{len(splits)} usable sources hashes to 'test'; add sources, raise "
                        f"test_fraction or set ood_fraction=0")
    counters: dict[str, int] = {}
    crops = _deal(order, samples - n_ood, variants, splits, counters, None)
    crops += _deal(test_order, n_ood, variants, None, counters, "ood")
    return sorted(crops, key=lambda c: (c.source_id, c.crop))


def plan_shards(crops: Sequence[Crop], rows_per_shard: int) -> list[list[Crop]]:
    shards: list[list[Crop]] = []
    cur: list[Crop] = []
    rows = 0
    for c in crops:
        cur.append(c)
        rows += c.variants
        if rows >= rows_per_shard:
            shards.append(cur)
            cur, rows = [], 0
    if cur:
        shards.append(cur)
    return shards


def shard_name(k: int) -> str:
    return f"part-{k:05d}.parquet"
