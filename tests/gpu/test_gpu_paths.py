"""GPU paths (marker `gpu`; skipped without CUDA): what CPU CI cannot exercise.

Run on a GPU machine with `pytest tests/gpu -m gpu`. Uses only the tiny model, built locally.
"""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu


def _batch(processor, n=4):
    from dutrain.models.prompts import encode_sft
    from dutrain.schema import render_answer
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(n)]
    target = render_answer({"degradations": [{"type": "jpeg", "params": {"quality": 35}}]}, "x")
    return encode_sft(processor, images, [target] * n)


def test_tiny_model_bf16_autocast_train_step_on_cuda():
    """The SFT recipe on GPU: bf16 autocast, gradient checkpointing, finite falling loss."""
    from dutrain.models.loading import load_model, load_processor
    from dutrain.models.tiny import tiny_model
    d = tiny_model()
    model = load_model(d, device="cuda")
    model.gradient_checkpointing_enable()
    model.train()
    batch = {k: v.cuda() for k, v in _batch(load_processor(d)).items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_cuda_and_cpu_forward_agree_in_fp32():
    from dutrain.models.loading import load_model, load_processor
    from dutrain.models.tiny import tiny_model
    d = tiny_model()
    batch = _batch(load_processor(d), n=2)
    cpu = load_model(d).eval()
    gpu = load_model(d, device="cuda").eval()
    with torch.no_grad():
        a = cpu(**batch).logits
        b = gpu(**{k: v.cuda() for k, v in batch.items()}).logits.cpu()
    assert torch.allclose(a, b, atol=2e-3, rtol=1e-3)
