"""The generate plan: hash splits, exact row counts, unique ids, ood from test sources, shards."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dutrain.data.plan import (
    PlanError,
    derive_seed,
    ood_rows,
    plan_crops,
    plan_shards,
    shard_name,
    split_of,
)


def sources(n: int, val: float = 0.1, test: float = 0.3) -> dict[str, str]:
    ids = [f"set/img{i:04d}.png" for i in range(n)]
    return {s: split_of(s, val, test) for s in ids}


def test_split_depends_only_on_the_id_and_follows_the_fractions():
    ids = [f"d/{i}.jpg" for i in range(4000)]
    splits = [split_of(s, 0.1, 0.2) for s in ids]
    assert splits == [split_of(s, 0.1, 0.2) for s in ids]
    c = Counter(splits)
    assert abs(c["test"] / 4000 - 0.2) < 0.03 and abs(c["val"] / 4000 - 0.1) < 0.03
    # growing the test fraction only moves sources into test, never between val and train
    for s, old in zip(ids, splits):
        new = split_of(s, 0.1, 0.25)
        assert new == old or new in ("test", "val")


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 40), samples=st.integers(1, 400), ood=st.sampled_from([0.0, 0.1, 0.5]),
       variants=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_plan_has_exact_rows_unique_ids_and_ood_from_test(n, samples, ood, variants, seed):
    src = sources(n)
    if ood_rows(samples, ood) and "test" not in src.values():
        with pytest.raises(PlanError, match="test-split source"):
            plan_crops(src, samples, ood, variants, seed)
        return
    crops = plan_crops(src, samples, ood, variants, seed)
    ids = [i for c in crops for i in c.sample_ids()]
    assert len(ids) == samples == len(set(ids))
    assert all(1 <= c.variants <= variants for c in crops)
    assert sum(c.variants for c in crops if c.split == "ood") == ood_rows(samples, ood)
    for c in crops:
        assert c.split == ("ood" if c.split == "ood" else src[c.source_id])
        if c.split == "ood":
            assert src[c.source_id] == "test"
    # crops of one source are numbered 0..k-1 across in-distribution and ood crops
    per_source: dict[str, list[int]] = {}
    for c in crops:
        per_source.setdefault(c.source_id, []).append(c.crop)
    assert all(sorted(v) == list(range(len(v))) for v in per_source.values())
    # the plan does not depend on the order the sources come in
    assert plan_crops(dict(reversed(list(src.items()))), samples, ood, variants, seed) == crops


def test_crops_spread_over_sources_round_robin():
    src = sources(10)
    crops = plan_crops(src, 400, 0.0, 4, seed=1)
    assert Counter(c.source_id for c in crops) == Counter({s: 10 for s in src})


def test_seed_changes_the_order_of_sources():
    src = sources(10)
    a = {c.source_id for c in plan_crops(src, 12, 0.0, 4, seed=1)}
    b = {c.source_id for c in plan_crops(src, 12, 0.0, 4, seed=2)}
    assert len(a) == len(b) == 3 and a != b


@settings(max_examples=40, deadline=None)
@given(samples=st.integers(1, 500), per_shard=st.integers(1, 100), variants=st.integers(1, 5))
def test_shards_cover_every_crop_once(samples, per_shard, variants):
    crops = plan_crops(sources(7), samples, 0.0, variants, seed=0)
    shards = plan_shards(crops, per_shard)
    assert [c for s in shards for c in s] == crops
    rows = [sum(c.variants for c in s) for s in shards]
    assert all(r >= per_shard for r in rows[:-1])
    assert all(r < per_shard + variants for r in rows)


def test_no_sources_is_a_clear_error():
    with pytest.raises(PlanError, match="no usable source"):
        plan_crops({}, 10, 0.0, 4, 0)


def test_seeds_and_names():
    assert derive_seed(0, "row", "a:0:0") == derive_seed(0, "row", "a:0:0")
    assert derive_seed(0, "row", "a:0:0") != derive_seed(1, "row", "a:0:0")
    assert 0 <= derive_seed(5, "crop", "x") < 2**63
    assert shard_name(3) == "part-00003.parquet"
