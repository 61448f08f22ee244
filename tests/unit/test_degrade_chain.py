"""apply_chain determinism, RNG streams, input handling, and the chain sampler."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import data

from dutrain.degrade import (
    DEFAULT_TYPE_PROBS,
    REGISTRY,
    apply_chain,
    apply_operator,
    operator_rng,
    sample_chain,
    to_float,
    to_rgb_uint8,
    to_uint8,
)
from dutrain.schema import TAXONOMY, TYPES, AnnotationError, canonicalize


def chain(*items):
    return {"degradations": [{"type": t, "params": p} for t, p in items]}


def at_max(t: str) -> dict:
    return {p.key: p.valid[1] for p in TAXONOMY[t].params}


@pytest.fixture(scope="module")
def natural() -> np.ndarray:
    return np.ascontiguousarray(data.chelsea()[::4, ::4][:64, :80])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**63 - 1), split=st.sampled_from(["train", "ood"]))
def test_same_inputs_same_bytes(natural, seed, split):
    ann = sample_chain(np.random.default_rng(seed), split)
    a = apply_chain(natural, ann, seed)
    b = apply_chain(natural.copy(), canonicalize(ann), seed)
    assert a.dtype == np.uint8 and a.shape == natural.shape
    assert a.tobytes() == b.tobytes()


def test_seed_changes_random_operators_only(natural):
    noisy = chain(("gaussian_noise", {"sigma": 20}))
    assert not np.array_equal(apply_chain(natural, noisy, 1), apply_chain(natural, noisy, 2))
    blur = chain(("gaussian_blur", {"sigma": 2.0}))
    np.testing.assert_array_equal(apply_chain(natural, blur, 1), apply_chain(natural, blur, 2))


def test_each_random_operator_has_its_own_stream(natural):
    seed = 99
    rain = ("rain", {"density": 10, "length": 15, "angle": -10})
    blur = ("defocus_blur", {"radius": 2.0})
    noise = ("gaussian_noise", {"sigma": 12})
    # written out operator by operator with the documented generators
    x = to_float(natural)
    x = apply_operator(x, *rain, np.random.default_rng([seed, 2]))
    x = apply_operator(x, *blur, np.random.default_rng([seed, 3]))
    x = apply_operator(x, *noise, np.random.default_rng([seed, 6]))
    np.testing.assert_array_equal(apply_chain(natural, chain(rain, blur, noise), seed), to_uint8(x))
    # the noise field does not depend on which operators come before it
    grey = np.full((32, 32, 3), 128, np.uint8)
    field = np.random.default_rng([seed, 6]).normal(0, 12 / 255, (32, 32, 3))
    alone = apply_chain(grey, chain(noise), seed)
    np.testing.assert_array_equal(alone, to_uint8((to_float(grey) + field).astype(np.float32)))
    assert operator_rng(seed, 6).normal() == np.random.default_rng([seed, 6]).normal()


def test_annotation_is_snapped_and_ordered_before_applying(natural):
    off_grid = {"degradations": [{"type": "jpeg", "params": {"quality": 40.4}},
                                 {"type": "gaussian_blur", "params": {"sigma": 1.73}}]}
    on_grid = chain(("gaussian_blur", {"sigma": 1.7}), ("jpeg", {"quality": 40}))
    np.testing.assert_array_equal(apply_chain(natural, off_grid, 0),
                                  apply_chain(natural, on_grid, 0))
    with pytest.raises(AnnotationError, match="off range"):
        apply_chain(natural, chain(("gaussian_blur", {"sigma": 60.0})), 0)
    with pytest.raises(AnnotationError, match="unknown type 'blur'"):
        apply_chain(natural, chain(("blur", {"sigma": 1.0})), 0)


def test_clean_chain_returns_the_image(natural):
    np.testing.assert_array_equal(apply_chain(natural, {"degradations": []}, 0), natural)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (2, 2), (13, 7), (40, 64)])
def test_every_operator_handles_tiny_and_non_square_images(t, shape):
    img = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = apply_chain(img, chain((t, at_max(t))), 4)
    assert out.shape == img.shape and out.dtype == np.uint8


def test_grayscale_is_replicated(natural):
    grey = natural[:, :, 1]
    ann = chain(("haze", {"beta": 1.0, "airlight": 0.8}), ("jpeg", {"quality": 50}))
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    expected = apply_chain(rgb, ann, 0)
    np.testing.assert_array_equal(apply_chain(grey, ann, 0), expected)
    np.testing.assert_array_equal(apply_chain(grey[:, :, None], ann, 0), expected)


def test_rgba_is_composited_on_white():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = [10, 100, 200]
    rgba[0, :, 3] = 255
    rgba[1, 0, 3] = 0
    rgba[1, 1:, 3] = 51  # a = 0.2
    rgb = to_rgb_uint8(rgba)
    np.testing.assert_array_equal(rgb[0], [[10, 100, 200]] * 3)
    np.testing.assert_array_equal(rgb[1, 0], [255, 255, 255])
    np.testing.assert_array_equal(rgb[1, 1], np.rint(np.array([10, 100, 200]) * 0.2 + 255 * 0.8))
    np.testing.assert_array_equal(apply_chain(rgba, {"degradations": []}, 0), rgb)


@pytest.mark.parametrize("bad,what", [
    (np.zeros((4, 4, 3), np.float32), "dtype float32"),
    (np.zeros((4, 4, 3), np.uint16), "dtype uint16"),
    (np.zeros((4, 4, 2), np.uint8), r"shape \(4, 4, 2\)"),
    (np.zeros((2, 4, 4, 3), np.uint8), r"shape \(2, 4, 4, 3\)"),
    (np.zeros((0, 4, 3), np.uint8), r"shape \(0, 4, 3\)"),
    ([[1, 2]], "got list"),
])
def test_bad_images_are_rejected_naming_what_is_allowed(bad, what):
    with pytest.raises(ValueError, match=what) as e:
        apply_chain(bad, {"degradations": []}, 0)
    assert "uint8 array of shape HxW, HxWx1, HxWx3 or HxWx4" in str(e.value)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3"])
def test_bad_seed_is_rejected(natural, seed):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        apply_chain(natural, {"degradations": []}, seed)


def test_apply_operator_wants_float_rgb():
    with pytest.raises(ValueError, match="float32 HxWx3"):
        apply_operator(np.zeros((4, 4, 3), np.uint8), "haze", {"beta": 1, "airlight": 0.8},
                       np.random.default_rng(0))


def test_registry_covers_taxonomy_in_stage_order():
    assert tuple(REGISTRY) == TYPES
    stages = {s.stage for s in TAXONOMY.values()}
    assert sum(DEFAULT_TYPE_PROBS.values()) == pytest.approx(len(stages))


def _check_structure(ann, max_n):
    assert ann == canonicalize(ann)
    stages = [TAXONOMY[d["type"]].stage for d in ann["degradations"]]
    assert stages == sorted(set(stages)) and len(stages) <= max_n  # stage order, one per stage


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), max_n=st.integers(0, 7))
def test_train_chains_are_on_the_train_grid(seed, max_n):
    ann = sample_chain(np.random.default_rng(seed), "train", max_degradations=max_n)
    _check_structure(ann, max_n)
    for d in ann["degradations"]:
        for p in TAXONOMY[d["type"]].params:
            assert d["params"][p.key] in p.grid_for("train")


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), max_n=st.integers(1, 7))
def test_ood_chains_have_a_key_outside_the_train_range(seed, max_n):
    ann = sample_chain(np.random.default_rng(seed), "ood", max_degradations=max_n)
    _check_structure(ann, max_n)
    assert ann["degradations"]
    outside = 0
    for d in ann["degradations"]:
        for p in TAXONOMY[d["type"]].params:
            v = d["params"][p.key]
            assert v in p.grid_for("train") or v in p.grid_for("ood")
            outside += not (p.train[0] <= v <= p.train[1])
    assert outside == 1


def test_clean_fraction_and_chain_lengths_are_respected():
    rng = np.random.default_rng(0)
    anns = [sample_chain(rng, "train", clean_fraction=0.3) for _ in range(3000)]
    lengths = np.array([len(a["degradations"]) for a in anns])
    assert (lengths == 0).mean() == pytest.approx(0.3, abs=0.03)
    assert set(lengths) == {0, 1, 2, 3}
    assert (lengths == 3).mean() == pytest.approx(0.7 / 3, abs=0.03)
    types = [d["type"] for a in anns for d in a["degradations"]]
    assert set(types) == set(TYPES)
    assert all(not sample_chain(rng, "train", max_degradations=0)["degradations"]
               for _ in range(20))
    assert all(sample_chain(rng, "ood", clean_fraction=1.0)["degradations"] for _ in range(20))


def test_type_probs_select_types():
    rng = np.random.default_rng(1)
    anns = [sample_chain(rng, "train", clean_fraction=0, type_probs={"jpeg": 1, "haze": 3})
            for _ in range(400)]
    types = [d["type"] for a in anns for d in a["degradations"]]
    assert set(types) == {"jpeg", "haze"}
    assert max(len(a["degradations"]) for a in anns) == 2  # only two stages have weight


@pytest.mark.parametrize("kwargs,msg", [
    ({"split": "val"}, "split must be one of"),
    ({"clean_fraction": 1.5}, "clean_fraction must be in"),
    ({"max_degradations": 8}, "max_degradations must be an integer"),
    ({"type_probs": {"jepg": 1}}, "unknown type"),
    ({"type_probs": {"jpeg": -1}}, "finite and >= 0"),
    ({"type_probs": {"jpeg": 0}}, "at least one type"),
    ({"split": "ood", "max_degradations": 0}, "needs max_degradations >= 1"),
])
def test_sampler_rejects_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        sample_chain(np.random.default_rng(0), **kwargs)
