"""Where dutrain keeps what it can rebuild: tiny models, downloaded checkpoints, judge records."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$DUTRAIN_CACHE`, else ~/.cache/dutrain."""
    return Path(os.environ.get("DUTRAIN_CACHE", Path.home() / ".cache" / "dutrain"))
