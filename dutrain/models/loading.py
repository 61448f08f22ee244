"""Resolve a model reference to a local Hugging Face directory and load it (safetensors only).

A reference is `tiny` (the locally built test/demo model), a local directory, an `s3://…`
prefix (downloaded once into the cache), or a hub id such as `Qwen/Qwen2.5-VL-3B-Instruct`.
Only the Qwen2-VL and Qwen2.5-VL families are accepted: prompts, the image pipeline and the
vLLM engine are written for them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .tiny import TinySpec, default_cache_dir, tiny_model

SUPPORTED_TYPES = ("qwen2_vl", "qwen2_5_vl")
#: files worth fetching from a remote checkpoint: weights as safetensors, never pickles
FETCH_PATTERNS = ("*.safetensors", "*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken")


def _wanted(name: str) -> bool:
    import fnmatch
    return any(fnmatch.fnmatch(name, p) for p in FETCH_PATTERNS)


def _download_s3(uri: str, cache_dir: Path, storage: Any = None) -> Path:
    from dutrain.io.storage import filesystem

    final = cache_dir / "models" / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    if (final / "config.json").is_file():
        return final
    fs, path = filesystem(uri, storage)
    names = [p for p in fs.ls(path, detail=False) if _wanted(Path(p).name)]
    if not any(Path(n).name == "config.json" for n in names):
        raise FileNotFoundError(f"no config.json under '{uri}': not a Hugging Face checkpoint")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=final.parent))
    try:
        for n in names:
            fs.get(n, str(tmp / Path(n).name))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_model(ref: str, cache_dir: str | os.PathLike | None = None, storage: Any = None,
                  tiny: TinySpec | None = None) -> Path:
    """A local directory holding the model `ref` (built, downloaded or found)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    ref = str(ref)
    if ref == "tiny":
        out = tiny_model(tiny, cache)
    elif ref.startswith("s3://"):
        out = _download_s3(ref, cache, storage)
    elif Path(ref).expanduser().is_dir():
        out = Path(ref).expanduser().resolve()
    elif ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download
        out = Path(snapshot_download(ref, allow_patterns=list(FETCH_PATTERNS)))
    else:
        raise ValueError(f"model {ref!r} is neither 'tiny', an existing directory, an s3:// "
                         f"prefix nor a hub id like 'Qwen/Qwen2.5-VL-3B-Instruct'")
    check_model_dir(out)
    return out


def check_model_dir(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The config of a supported checkpoint with safetensors weights, else a clear error."""
    d = Path(model_dir)
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"'{d}' holds no config.json: not a Hugging Face checkpoint")
    cfg = json.loads(cfg_file.read_text())
    mt = cfg.get("model_type")
    if mt not in SUPPORTED_TYPES:
        raise ValueError(f"model type {mt!r} in '{d}' is not supported; allowed: "
                         f"{', '.join(SUPPORTED_TYPES)}")
    if not any(d.glob("*.safetensors")):
        raise FileNotFoundError(f"'{d}' has no .safetensors weights (pickled weights are refused)")
    return cfg


def load_processor(model_dir: str | os.PathLike) -> Any:
    from transformers import AutoProcessor
    return AutoProcessor.from_pretrained(str(model_dir))


def load_model(model_dir: str | os.PathLike, dtype: str = "float32", device: str = "cpu",
               attn_implementation: str | None = None) -> Any:
    """The model for conditional generation (Qwen2-VL or Qwen2.5-VL), from safetensors."""
    import torch
    from transformers import AutoModelForImageTextToText

    check_model_dir(model_dir)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype), "use_safetensors": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), **kwargs)
    return model.to(device)
