"""The DDNM operators: A·A⁺·A = A, adjoints, and agreement with the library's forward physics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dutrain.degrade import apply_operator
from dutrain.restore.linear import CircularBlur, Composite, Identity, Resample, operator_for
from dutrain.restore.physics import psf

H, W = 24, 30
BLURS = [("gaussian_blur", {"sigma": 1.2}), ("motion_blur", {"length": 7, "angle": 35}),
         ("defocus_blur", {"radius": 2.5})]


def _rand(seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(2, 3, H, W)))


def _ops():
    yield "identity", Identity()
    for t, p in BLURS:
        yield t, CircularBlur(psf(t, p), H, W)
    for s in (0.25, 0.5, 0.8):
        yield f"downsample{s}", Resample(H, W, s)


@pytest.mark.parametrize("name,op", list(_ops()))
def test_pinv_is_a_generalised_inverse_and_adjoint_is_exact(name, op):
    x, y = _rand(0), _rand(1)
    assert torch.allclose(op.A(op.pinv(op.A(x))), op.A(x), atol=1e-10)
    assert torch.allclose(op.pinv(op.A(op.pinv(y))), op.pinv(y), atol=1e-10)
    assert abs(float((op.A(x) * y).sum() - (x * op.At(y)).sum())) < 1e-9
    # the null-space part is invisible to A
    assert float(op.A(op.null_project(x)).abs().max()) < 1e-10


@pytest.mark.parametrize("blur,bound", [(BLURS[0], 1e-4), (BLURS[1], 2e-2), (BLURS[2], 1e-2)])
def test_composite_pinv_is_refined_towards_consistency(blur, bound):
    op = operator_for([blur, ("downsample", {"scale": 0.5}), ("gaussian_noise", {"sigma": 5})],
                      H, W)
    assert isinstance(op, Composite) and len(op.ops) == 2
    y = op.A(_rand(2))
    one_pass = float((op.A(op._product_pinv(y)) - y).abs().max())
    refined = float((op.A(op.pinv(y)) - y).abs().max())
    assert refined < bound and refined < one_pass


def test_resample_is_the_library_downsample_on_smooth_images():
    yy, xx = np.mgrid[0:H, 0:W]
    img = (0.5 + 0.15 * np.sin(yy / 5.0)[..., None] * np.cos(xx / 7.0)[..., None]
           * np.array([1.0, 0.7, 0.4])).astype(np.float32)
    lib = apply_operator(img, "downsample", {"scale": 0.5}, np.random.default_rng(0))
    x = torch.from_numpy(img.transpose(2, 0, 1)[None].astype(np.float64))
    mine = Resample(H, W, 0.5).A(x)[0].numpy().transpose(1, 2, 0)
    assert np.abs(mine - lib).max() < 1e-5


@pytest.mark.parametrize("t,p", BLURS)
def test_circular_blur_is_the_library_blur_away_from_the_border(t, p):
    img = np.random.default_rng(3).uniform(0.2, 0.8, (48, 48, 3)).astype(np.float32)
    lib = apply_operator(img, t, p, np.random.default_rng(0))
    x = torch.from_numpy(img.transpose(2, 0, 1)[None].astype(np.float64))
    mine = CircularBlur(psf(t, p), 48, 48, eps=1e-9).A(x)[0].numpy().transpose(1, 2, 0)
    r = psf(t, p).shape[0] // 2
    assert np.abs(mine - lib)[r:-r, r:-r].max() < 1e-5


def test_non_linear_types_are_refused():
    with pytest.raises(ValueError, match="'haze' is not linear"):
        operator_for([("haze", {"beta": 1.0, "airlight": 0.8})], H, W)
