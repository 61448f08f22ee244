"""Zero-shot restoration with a pretrained diffusion model: DDNM (Wang, Yu & Zhang, ICLR 2023).

The range–null-space decomposition: at every reverse step the model's clean estimate x0|t keeps
only its null-space part and takes its range-space part from the observation,

    x̂0 = A⁺y + (I − A⁺A) x0|t,

so the result is consistent with the observation (A x̂0 = y for y in the range of A) and the
model only invents what the observation cannot say. With observation noise of std sigma_y
(DDNM+) the range correction is scaled by lambda_t = min(1, s_t / (sqrt(ᾱ_prev)·sigma_y)),
s_t = sqrt(1 − ᾱ_prev), and the noise re-injected at the step shrinks so the total matches
the schedule; at sigma_y = 0 this is plain DDNM.

Only the linear part of an annotation goes through DDNM (blur, downsample, noise: `linear`);
JPEG, low light, rain and haze use the classical inverses, in the same reverse stage order. The
model is any `diffusers` UNet2DModel checkpoint (safetensors) in a local directory or under an
s3:// prefix — either a pipeline layout (``unet/`` and ``scheduler/``) or a bare UNet directory;
its noise schedule comes from its scheduler config (else diffusers' DDPM default) and the
timesteps from `DDIMScheduler.set_timesteps`. Nothing is downloaded from a hub.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from dutrain.degrade import to_float, to_rgb_uint8, to_uint8
from dutrain.errors import UserError

from .classical import INVERSES, State, plan
from .linear import LINEAR_TYPES, NOISE_TYPES, LinearOperator, operator_for

#: files fetched from an s3:// checkpoint (weights as safetensors only, never pickles)
_FETCH = (".safetensors", ".json")


@dataclass
class DiffusionModel:
    unet: Any
    alphas_cumprod: torch.Tensor  # float64, index = training timestep
    scheduler: Any  # a DDIMScheduler on the checkpoint's noise schedule
    prediction_type: str
    device: torch.device

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.unet.config.down_block_types) - 1)


def _fetch_s3(uri: str, storage: Any = None, cache_dir: str | Path | None = None) -> Path:
    from dutrain.io.storage import filesystem

    base = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "dutrain" / "diffusion"
    final = base / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    if final.is_dir():
        return final
    fs, root = filesystem(uri, storage)
    files = [f for f in fs.find(root) if f.endswith(_FETCH)]
    if not files:
        raise UserError(f"no .safetensors/.json files under '{uri}'")
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=base))
    try:
        for f in files:
            dest = tmp / Path(f).relative_to(root.rstrip("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get(f, str(dest))
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_diffusion(ref: str, device: str = "cpu", storage: Any = None,
                   cache_dir: str | Path | None = None) -> DiffusionModel:
    """A UNet2DModel and its noise schedule from a local directory or an s3:// prefix."""
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

    root = _fetch_s3(ref, storage, cache_dir) if str(ref).startswith("s3://") else Path(ref)
    if not root.is_dir():
        raise UserError(f"diffusion model '{ref}' is not a directory or an s3:// prefix "
                        f"(nothing is downloaded from a hub)")
    unet_dir = root / "unet" if (root / "unet" / "config.json").is_file() else root
    if not (unet_dir / "config.json").is_file():
        raise UserError(f"'{root}' holds no UNet config.json (expected a diffusers "
                        f"UNet2DModel directory or a pipeline with unet/)")
    unet = UNet2DModel.from_pretrained(str(unet_dir), use_safetensors=True)
    if unet.config.in_channels != 3:
        raise UserError(f"the UNet in '{unet_dir}' takes {unet.config.in_channels} channels; "
                        f"restoration needs an RGB (3-channel) model")
    sched_dir = next((d for d in (root / "scheduler", root)
                      if (d / "scheduler_config.json").is_file()), None)
    base = DDPMScheduler.from_pretrained(str(sched_dir)) if sched_dir else DDPMScheduler()
    sched = DDIMScheduler.from_config(base.config)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    unet = unet.to(dev).eval()
    return DiffusionModel(unet, sched.alphas_cumprod.to(torch.float64), sched,
                          sched.config.prediction_type, dev)


def _model_x0_eps(model: DiffusionModel, x: torch.Tensor, t: int, a_t: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0|t, eps) from the UNet at timestep t; the input is reflect-padded to the UNet's
    down-sampling factor and its output cropped back."""
    f = model.downsampling_factor
    h, w = x.shape[-2:]
    ph, pw = (-h) % f, (-w) % f
    inp = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x
    tt = torch.full((x.shape[0],), t, device=model.device, dtype=torch.long)
    with torch.no_grad():
        out = model.unet(inp.to(model.device, torch.float32), tt).sample
    out = out[:, :x.shape[1], :h, :w].to("cpu", torch.float64)  # learned-variance models: 2C
    sa, s1 = a_t.sqrt(), (1 - a_t).sqrt()
    if model.prediction_type == "epsilon":
        eps = out
        x0 = (x - s1 * eps) / sa
    elif model.prediction_type == "sample":
        x0 = out
        eps = (x - sa * x0) / s1
    elif model.prediction_type == "v_prediction":
        x0 = sa * x - s1 * out
        eps = s1 * x + sa * out
    else:
        raise ValueError(f"unsupported prediction_type {model.prediction_type!r}")
    return x0, eps


def ddnm(y: torch.Tensor, op: LinearOperator, model: DiffusionModel, steps: int = 50,
         eta: float = 0.85, sigma_y: float = 0.0, seed: int = 0) -> torch.Tensor:
    """DDNM(+) sampling for observation `y` ((N, C, H, W) float64 in the model's [-1, 1] space).

    Returns the final x̂0 unclipped (float64), so ``op.A(result) == op.A(op.pinv(y))`` to float
    precision when sigma_y == 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    gen = torch.Generator().manual_seed(int(seed))
    model.scheduler.set_timesteps(steps)
    ts = [int(t) for t in model.scheduler.timesteps]
    ac = model.alphas_cumprod
    y = y.to(torch.float64)
    y_pinv = op.pinv(y)
    x = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    x0_hat = x
    for i, t in enumerate(ts):
        a_t = ac[t]
        a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        x0, eps = _model_x0_eps(model, x, t, a_t)
        x0 = x0.clamp(-1, 1)
        s_next = float((1 - a_prev).sqrt())
        noise_in_x0 = float(a_prev.sqrt()) * sigma_y
        lam = 1.0 if s_next >= noise_in_x0 else s_next / noise_in_x0
        # x̂0 = x0 − λ A⁺(A x0 − y) = λ(A⁺y + (I − A⁺A)x0) + (1 − λ)x0
        x0_hat = x0 - lam * (op.pinv(op.A(x0)) - y_pinv)
        gamma = max(s_next ** 2 - (lam * noise_in_x0) ** 2, 0.0) ** 0.5
        z = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        x = a_prev.sqrt() * x0_hat + gamma * ((1 - eta ** 2) ** 0.5 * eps + eta * z)
    return x0_hat


def _noise_sigma(t: str, p: Mapping[str, Any], x: np.ndarray) -> float:
    """Observation noise std on the 0-1 scale: Gaussian sigma/255, or Poisson's sqrt(mean/peak)."""
    if t == "gaussian_noise":
        return float(p["sigma"]) / 255.0
    return float(np.sqrt(max(float(x.mean()), 1e-3) / float(p["peak"])))


def restore_ddnm(image_uint8_hwc: np.ndarray, annotation: Mapping[str, Any],
                 model: DiffusionModel, steps: int = 50, eta: float = 0.85, seed: int = 0,
                 eps: float = 0.05) -> np.ndarray:
    """Restore with DDNM for each run of linear stages and the classical inverse for the rest."""
    x = to_float(to_rgb_uint8(image_uint8_hwc))
    h, w = x.shape[:2]
    st = State()
    segment: list[Any] = []

    def flush(x: np.ndarray) -> np.ndarray:
        if not segment:
            return x
        forward = list(reversed(segment))
        noise = [s for s in forward if s.type in NOISE_TYPES]
        sigma = 2.0 * _noise_sigma(noise[0].type, noise[0].params, x) if noise else 0.0
        op = operator_for([(s.type, s.params) for s in forward], h, w, eps)
        y = torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float64) * 2 - 1)
        out = ddnm(y, op, model, steps, eta, sigma, seed)
        segment.clear()
        return np.clip((out[0].numpy().transpose(1, 2, 0) + 1) / 2, 0, 1).astype(np.float32)

    for step in plan(annotation):
        if step.type in LINEAR_TYPES:
            segment.append(step)
            continue
        x = flush(x)
        x = np.clip(INVERSES[step.type](x, step.params, st), 0, 1).astype(np.float32)
    return to_uint8(flush(x))

