"""The RL batch type: split per worker and merge back without losing or reordering rows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dutrain.rl.batch import Batch


def _batch(n: int) -> Batch:
    return Batch({"i": list(range(n)), "s": [f"r{k}" for k in range(n)]}, {"step": 3})


@given(n=st.integers(0, 60), shards=st.integers(1, 9))
def test_split_then_merge_is_identity(n, shards):
    b = _batch(n)
    parts = b.split(shards)
    assert len(parts) == shards
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n
    merged = Batch.merge(parts)
    assert merged.columns == b.columns and merged.meta == {"step": 3}


def test_repeat_interleave_keeps_groups_contiguous():
    b = _batch(3).repeat_interleave(2)
    assert b["i"] == [0, 0, 1, 1, 2, 2]


def test_with_columns_and_select():
    b = _batch(4).with_columns(x=[10, 11, 12, 13])
    assert b.select([3, 0])["x"] == [13, 10]
    assert "x" in b and "y" not in b


def test_bad_batches_raise_clear_errors():
    with pytest.raises(ValueError, match="differ in length"):
        Batch({"a": [1, 2], "b": [1]})
    with pytest.raises(ValueError, match="different columns"):
        Batch.merge([Batch({"a": [1]}), Batch({"b": [1]})])
    with pytest.raises(KeyError, match="no column 'z'"):
        _batch(2)["z"]
    with pytest.raises(ValueError, match="n >= 1"):
        _batch(2).split(0)
