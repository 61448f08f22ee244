"""The data-parallel group a training worker is in (torch.distributed), if any."""

from __future__ import annotations

import torch.distributed as dist


def world_size() -> int:
    """Workers in the default process group; 1 when there is none (one worker, or a unit test)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1
