"""The DCT band-energy init of the tiny vision tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Qwen2VLForConditionalGeneration

from dutrain.models import load_processor, tiny_model
from dutrain.models.tiny import TinySpec, _model_config, dct_patch_filters, init_dct_tower


def test_dct_filters_are_orthogonal_and_leave_the_energy_half_free():
    w = dct_patch_filters(32, 64, 8)
    assert w.shape == (64, 3, 2, 8, 8)
    assert torch.count_nonzero(w[32:]) == 0
    flat = w[:32].reshape(32, -1).double()
    gram = flat @ flat.T
    off = gram - torch.diag(torch.diag(gram))
    assert off.abs().max() < 1e-6  # distinct bases (and luma vs chroma) are orthogonal


@pytest.fixture(scope="module")
def tokenizer():
    return load_processor(tiny_model()).tokenizer


def test_band_energies_rise_with_noise(tokenizer):
    spec = TinySpec(patch_size=8, vision_embed_dim=64, patch_init="dct")
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(_model_config(spec, tokenizer))
    init_dct_tower(model, spec)
    vis = model.model.visual
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:8, 0:8] / 8.0
    smooth = np.stack([0.3 + 0.2 * x + 0.1 * y] * 3)  # C×H×W in [0, 1]
    energies = []
    for sigma in (0.0, 0.05, 0.2):
        img = smooth + sigma * rng.standard_normal(smooth.shape)
        patch = torch.tensor(np.stack([img, img], 1)[None], dtype=torch.float32)  # 1×C×T×H×W
        with torch.no_grad():
            h = vis.patch_embed(patch.reshape(1, -1))
            e = vis.blocks[0].mlp(vis.blocks[0].norm2(h))[0, 32:]
        assert torch.count_nonzero(h[0, 32:]) == 0  # the energy half starts empty
        energies.append(float(e.sum()))
    assert energies[0] < energies[1] < energies[2], energies


def test_block_boundary_filters_see_jpeg_steps_not_smooth_ramps():
    from dutrain.models.tiny import block_boundary_filters
    assert block_boundary_filters(8) == []  # blocks align with patches: nothing inside to see
    fs = block_boundary_filters(16)
    assert len(fs) == 8  # one boundary (column/row 8) x 4 row groups x 2 orientations
    y, x = np.mgrid[0:16, 0:16].astype(np.float64)
    ramp = torch.tensor(0.3 + 0.02 * x + 0.01 * y)
    step = ramp + 0.1 * torch.tensor((x >= 8).astype(float) + (y >= 8).astype(float))
    assert max(abs(float((f * ramp).sum())) for f in fs) < 1e-9
    assert min(abs(float((f * step).sum())) for f in fs) > 0.1


def test_dct_block_init_builds_and_keeps_the_energy_half_free(tokenizer):
    spec = TinySpec(patch_size=16, vision_embed_dim=64, patch_init="dct_block")
    model = Qwen2VLForConditionalGeneration(_model_config(spec, tokenizer))
    init_dct_tower(model, spec)
    w = model.model.visual.patch_embed.proj.weight
    assert torch.count_nonzero(w[32:]) == 0
    assert torch.isfinite(w).all() and float(w[:32].flatten(1).norm(dim=1).min()) > 0.1


def test_sft_config_accepts_exactly_the_patch_inits_the_builder_knows():
    # the config validates before any worker starts, so its choices must track PATCH_INITS
    from dutrain.config import ConfigError, load_config
    from dutrain.config.sft import SFTConfig
    from dutrain.models.tiny import PATCH_INITS
    for p in PATCH_INITS:
        assert load_config(SFTConfig, overrides=[f"tiny.patch_init={p}"]).tiny.patch_init == p
    with pytest.raises(ConfigError, match="patch_init"):
        load_config(SFTConfig, overrides=["tiny.patch_init=wavelet"])


def test_merger_starts_as_the_mean_of_each_feature_over_its_patch_group(tokenizer):
    spec = TinySpec(patch_size=16, vision_embed_dim=64, patch_init="dct")
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(_model_config(spec, tokenizer))
    init_dct_tower(model, spec)
    merger = model.model.visual.merger
    x = torch.randn(8, 64) * 3  # 8 patches = 2 merge groups of 2×2
    with torch.no_grad():
        out = merger(x)
        want = merger.ln_q(x).view(2, 4, 64).mean(1)
    assert out.shape == (2, spec.hidden_size)
    n = min(64, spec.hidden_size)
    assert torch.allclose(out[:, :n], want[:, :n], atol=1e-5)  # GELU(z) - GELU(-z) = z exactly
    assert torch.count_nonzero(out[:, n:]) == 0
