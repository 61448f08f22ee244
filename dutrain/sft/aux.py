"""Auxiliary perception loss for SFT (`aux_loss` > 0): the image tokens the language model
receives must themselves tell which degradations the image holds.

The answer's cross-entropy reaches the vision tower only through the language model; on the
demo scale the tower's own untrained features separate the types better (linear probe 0.64)
than the trained VLM names them (0.52, docs/experiments/demo-model.md). This loss adds a direct
signal: a linear head on the mean and standard deviation of each image's merged tokens (the
output of `visual.merger`, read by a forward hook during the ordinary forward, so DDP sees one
forward) predicts the multi-hot set of true types (binary cross-entropy; clean = none). The head
lives beside the model, is trained with it and checkpointed in the trainer state, and is not
saved with the model: `final/` stays an ordinary Qwen2-VL checkpoint.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import torch
import torch.distributed as dist

from dutrain.runtime.dist import world_size
from dutrain.schema import CLEAN, TYPES, types_of

#: the head's outputs: every degradation type (clean is the empty set)
AUX_TYPES = tuple(t for t in TYPES if t != CLEAN)


def type_targets(annotations: Sequence[str | dict[str, Any]]) -> torch.Tensor:
    """(n, len(AUX_TYPES)) multi-hot targets of annotations (JSON text or dicts)."""
    out = torch.zeros(len(annotations), len(AUX_TYPES))
    for i, a in enumerate(annotations):
        for t in types_of(json.loads(a) if isinstance(a, str) else a):
            if t in AUX_TYPES:
                out[i, AUX_TYPES.index(t)] = 1.0
    return out


def pooled(tokens: torch.Tensor, grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """Per image, [mean, std] over its merged tokens: `tokens` is the merger's (sum of tokens,
    hidden) output for the batch, `grid_thw` the processor's (n, 3) patch grids."""
    counts = (grid_thw.prod(-1) // (merge * merge)).tolist()
    parts = torch.split(tokens, [int(c) for c in counts])
    return torch.stack([torch.cat([p.mean(0), p.std(0, unbiased=False)]) for p in parts])


class PerceptionHead(torch.nn.Module):
    """Linear read-out of the pooled image tokens, and the hook that captures them."""

    def __init__(self, model: Any):
        super().__init__()
        visual = model.model.visual
        hidden = int(visual.merger.mlp[-1].out_features)
        self.merge = int(model.config.vision_config.spatial_merge_size)
        self.linear = torch.nn.Linear(2 * hidden, len(AUX_TYPES))
        self._tokens: torch.Tensor | None = None
        self._hook = visual.merger.register_forward_hook(self._capture)

    def _capture(self, _mod: Any, _inp: Any, out: torch.Tensor) -> None:
        self._tokens = out

    def loss(self, grid_thw: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """BCE of the head on the tokens the last forward produced (consumed: a forward that
        did not run the tower is an error, not a stale loss)."""
        if self._tokens is None:
            raise RuntimeError("aux_loss: the last forward produced no image tokens")
        tokens, self._tokens = self._tokens, None
        logits = self.linear(pooled(tokens.float(), grid_thw, self.merge))
        return torch.nn.functional.binary_cross_entropy_with_logits(
            logits, targets.to(logits.device))

    def drop(self) -> None:
        """Forget captured tokens (forwards without the loss: validation, generation)."""
        self._tokens = None

    def sync_grads(self) -> None:
        """Average the head's gradients over the data-parallel workers (it is outside DDP)."""
        world = world_size()
        if world == 1:
            return
        for p in self.linear.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world
