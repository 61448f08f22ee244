"""The auxiliary perception loss (`sft aux_loss`): targets, pooling and the head on the tiny
model's vision tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dutrain.models import encode_sft, load_model, load_processor, tiny_model
from dutrain.sft.aux import AUX_TYPES, PerceptionHead, pooled, type_targets


def test_type_targets_are_multi_hot_and_clean_is_empty():
    anns = ['{"degradations": []}',
            {"degradations": [{"type": "haze", "params": {"beta": 1.0, "airlight": 0.8}},
                              {"type": "jpeg", "params": {"quality": 30}}]}]
    t = type_targets(anns)
    assert t.shape == (2, len(AUX_TYPES)) and t[0].sum() == 0
    assert {AUX_TYPES[i] for i in torch.nonzero(t[1]).flatten().tolist()} == {"haze", "jpeg"}


def test_pooled_splits_the_batch_tokens_per_image():
    grid = torch.tensor([[1, 4, 4], [1, 2, 4]])  # 16 and 8 patches → 4 and 2 tokens (merge 2)
    tok = torch.cat([torch.ones(4, 3), torch.tensor([[0., 2, 4], [2, 2, 0]])])
    p = pooled(tok, grid, 2)
    assert p.shape == (2, 6)
    np.testing.assert_allclose(p[0], [1, 1, 1, 0, 0, 0])
    np.testing.assert_allclose(p[1], [1, 2, 2, 1, 0, 2])


def test_the_head_reads_the_tokens_of_the_forward_and_trains_the_tower():
    d = tiny_model()
    proc, model = load_processor(d), load_model(d)
    head = PerceptionHead(model)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    b = encode_sft(proc, images, ["<answer>{}</answer>"] * 3)
    with pytest.raises(RuntimeError, match="no image tokens"):
        head.loss(b["image_grid_thw"], torch.zeros(3, len(AUX_TYPES)))
    targets = type_targets(['{"degradations": []}'] * 2 + [
        {"degradations": [{"type": "gaussian_noise", "params": {"sigma": 10}}]}])
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-2)
    losses = []
    for _ in range(8):
        model(**b)
        loss = head.loss(b["image_grid_thw"], targets)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        tower = model.model.visual.patch_embed.proj.weight.grad
        assert tower is not None and float(tower.abs().sum()) > 0
        opt.step()
    assert losses[-1] < 0.5 * losses[0], losses
    # the head is no part of the model: a saved model is an ordinary Qwen2-VL checkpoint
    assert not any(n.startswith("linear") for n, _ in model.named_parameters())
