"""Linear degradation operators A with a pseudo-inverse A⁺, for the DDNM backend.

Tensors are (N, C, H, W) float64. Each operator provides ``A``, its adjoint ``At`` and ``pinv``
with ``A·pinv·A = A``, which is all the range–null-space decomposition needs: for any x,
``x̂ = A⁺y + (I − A⁺A)x`` satisfies ``A x̂ = A A⁺ y``, which equals y for every y in the range of A.

How each A relates to the dataset's exact forward physics (docs/design.md §3):
- `Resample` (downsample): ``X -> Mh X Mwᵀ`` with ``M = U·D`` the matrices of Pillow's bicubic
  down- and up-resize along each axis (`physics.downsample_matrix`). This *is* the library's
  operator, except that the library clips bicubic overshoot to [0, 1] after each resize.
  ``A⁺ = Mh⁺ ⊗ Mw⁺`` (the pseudo-inverse of a Kronecker product), computed once by SVD: exact.
- `CircularBlur` (Gaussian, motion, defocus blur): correlation with the annotation's PSF on a
  periodic grid, with the frequencies where abs(K) < eps removed from the operator (so A⁺ is its
  exact pseudo-inverse rather than a division by near-zeros). The library blurs with a
  "reflect" border: the two agree except within the PSF radius of the image border, and they
  differ in the removed frequencies by at most eps times the signal there.
- `Composite`: the chain of several of these (blur then downsample). The product of the parts'
  pseudo-inverses is not a generalised inverse of the product, so it is refined by `passes`
  rounds of u ← u + P(y − A u). ``A·pinv·A = A`` then holds only approximately: on 24×30 to
  64-px images after 10 passes the residual max|A u − y| was ≤ 5e-6 for Gaussian blur +
  downsample and ≤ 1e-2 for motion/defocus blur + downsample (in [-1, 1] units): data
  consistency is exact for single operators only. (Conjugate gradients on A Aᵀ u = y reach
  the exact minimum-norm answer but needed thousands of iterations per step here.)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .physics import BLUR_TYPES, downsample_matrix, otf, psf

Tensor = torch.Tensor


class LinearOperator:
    """A linear map on (N, C, H, W) images with its adjoint and a pseudo-inverse."""

    def A(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def At(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def pinv(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def null_project(self, x: Tensor) -> Tensor:
        """(I − A⁺A) x: the part of x the observation says nothing about."""
        return x - self.pinv(self.A(x))


class Identity(LinearOperator):
    def A(self, x: Tensor) -> Tensor:
        return x

    At = pinv = A


def _t(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


class Resample(LinearOperator):
    """The dataset's down-then-up bicubic resize as ``Mh X Mwᵀ`` (see module doc)."""

    def __init__(self, height: int, width: int, scale: float):
        mh, mw = downsample_matrix(height, scale), downsample_matrix(width, scale)
        # singular values of M are either ≥ ~0.1 (the kept band) or ~1e-16 (the null space)
        self.mh, self.mw = _t(mh), _t(mw)
        self.ph, self.pw = _t(np.linalg.pinv(mh, rcond=1e-8)), _t(np.linalg.pinv(mw, rcond=1e-8))

    def A(self, x: Tensor) -> Tensor:
        return self.mh @ x @ self.mw.T

    def At(self, y: Tensor) -> Tensor:
        return self.mh.T @ y @ self.mw

    def pinv(self, y: Tensor) -> Tensor:
        return self.ph @ y @ self.pw.T


class CircularBlur(LinearOperator):
    """Periodic correlation with `kernel`, frequencies with abs(K) < eps removed (module doc)."""

    def __init__(self, kernel: np.ndarray, height: int, width: int, eps: float = 0.05):
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1); got {eps!r}")
        k = otf(kernel, (height, width))
        keep = np.abs(k) >= eps
        self.k = torch.from_numpy(np.where(keep, k, 0))
        self.k_inv = torch.from_numpy(np.where(keep, 1.0 / np.where(keep, k, 1), 0))

    def _apply(self, x: Tensor, mult: Tensor) -> Tensor:
        return torch.fft.ifft2(torch.fft.fft2(x) * mult).real

    def A(self, x: Tensor) -> Tensor:
        return self._apply(x, self.k)

    def At(self, y: Tensor) -> Tensor:
        return self._apply(y, self.k.conj())

    def pinv(self, y: Tensor) -> Tensor:
        return self._apply(y, self.k_inv)


class Composite(LinearOperator):
    """``ops[-1] ∘ … ∘ ops[0]``; pseudo-inverse by refining the product of the parts' ones."""

    def __init__(self, ops: Sequence[LinearOperator], passes: int = 10):
        self.ops = list(ops)
        self.passes = passes

    def A(self, x: Tensor) -> Tensor:
        for op in self.ops:
            x = op.A(x)
        return x

    def At(self, y: Tensor) -> Tensor:
        for op in reversed(self.ops):
            y = op.At(y)
        return y

    def _product_pinv(self, y: Tensor) -> Tensor:
        for op in reversed(self.ops):
            y = op.pinv(y)
        return y

    def pinv(self, y: Tensor) -> Tensor:
        # P = ops[0]⁺ ∘ … ∘ ops[-1]⁺ is not a generalised inverse of the product (the blur's
        # Fourier projector and the resize's row-space projector do not commute); iterating
        # u ← u + P(y − A u) drives A u towards y (see module doc for how far)
        u = self._product_pinv(y)
        for _ in range(self.passes):
            u = u + self._product_pinv(y - self.A(u))
        return u


#: degradation types DDNM handles as linear operators (noise sets sigma_y, not A)
LINEAR_TYPES = (*BLUR_TYPES, "downsample", "gaussian_noise", "poisson_noise")
NOISE_TYPES = ("gaussian_noise", "poisson_noise")


def operator_for(steps: Sequence[tuple[str, Mapping[str, Any]]], height: int, width: int,
                 eps: float = 0.05) -> LinearOperator:
    """A for a run of linear degradations given in forward (stage) order; noise adds nothing."""
    ops: list[LinearOperator] = []
    for t, p in steps:
        if t in BLUR_TYPES:
            ops.append(CircularBlur(psf(t, p), height, width, eps))
        elif t == "downsample":
            ops.append(Resample(height, width, float(p["scale"])))
        elif t not in NOISE_TYPES:
            raise ValueError(f"{t!r} is not linear; linear types: {', '.join(LINEAR_TYPES)}")
    if not ops:
        return Identity()
    return ops[0] if len(ops) == 1 else Composite(ops)
