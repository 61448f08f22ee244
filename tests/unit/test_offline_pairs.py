"""Preference pairs from scored samples (`dutrain.offline.pairs`): margins, ties, min margin."""

from __future__ import annotations

import pytest

from dutrain.offline.pairs import best_samples, build_pairs, pair_stats


def _s(pid, i, total):
    return {"prompt_id": pid, "sample_index": i, "total": total}


def test_pairs_chosen_is_higher_and_ties_are_dropped():
    samples = [_s("a", 0, 0.2), _s("a", 1, 0.9), _s("a", 2, 0.2), _s("b", 0, 0.5),
               _s("b", 1, 0.5)]
    pairs = build_pairs(samples)
    assert [(p.prompt_id, p.chosen, p.rejected) for p in pairs] == [("a", 1, 0), ("a", 1, 2)]
    assert all(p.chosen_reward > p.rejected_reward for p in pairs)
    assert pairs[0].margin == pytest.approx(0.7)


def test_min_margin_and_cap_keep_the_widest():
    samples = [_s("a", 0, 0.0), _s("a", 1, 0.3), _s("a", 2, 1.0)]
    assert {(p.chosen, p.rejected) for p in build_pairs(samples, min_margin=0.5)} == \
        {(2, 0), (2, 1)}
    assert [(p.chosen, p.rejected) for p in build_pairs(samples, max_pairs_per_prompt=1)] == \
        [(2, 0)]
    assert len(build_pairs(samples, min_margin=1.01)) == 0
    with pytest.raises(ValueError):
        build_pairs(samples, min_margin=-1)


def test_best_samples_and_stats():
    samples = [_s("a", 0, 0.4), _s("a", 1, 0.4), _s("b", 0, 0.1), _s("b", 1, 0.0)]
    assert [(s["prompt_id"], s["sample_index"]) for s in best_samples(samples)] == \
        [("a", 0), ("b", 0)]
    assert [s["prompt_id"] for s in best_samples(samples, min_reward=0.2)] == ["a"]
    st = pair_stats(build_pairs(samples), prompts=2)
    assert st["pairs/kept"] == 1 and st["pairs/prompts_with_pair"] == 1
    assert st["pairs/mean_margin"] == pytest.approx(0.1)
    assert st["pairs/chosen_reward"] == pytest.approx(0.1)
    assert st["pairs/rejected_reward"] == 0.0
