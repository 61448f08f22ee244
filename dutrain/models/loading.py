"""Resolve a model reference to a local Hugging Face directory and load it (safetensors only).

A reference is `tiny` (the locally built test/demo model), a local directory, an `s3://…`
prefix (downloaded once into the cache), or a hub id such as `Qwen/Qwen2.5-VL-3B-Instruct`.
Only the Qwen2-VL and Qwen2.5-VL families are accepted: prompts, the image pipeline and the
vLLM engine are written for them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dutrain.errors import UserError
from dutrain.io.storage import copy_tree, filesystem
from dutrain.runtime.cache import cache_root

from .tiny import TinySpec, tiny_model

SUPPORTED_TYPES = ("qwen2_vl", "qwen2_5_vl")
#: files worth fetching from a remote checkpoint: weights as safetensors, never pickles
FETCH_PATTERNS = ("*.safetensors", "*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken")

# torch, transformers and huggingface_hub are imported in the functions that use them: this
# module comes with `import dutrain.models`, which config validation and drivers that only
# resolve a local or tiny model do without them (see dutrain/models/tiny.py)


class CheckpointError(UserError, FileNotFoundError):
    """A model reference that is not a usable checkpoint (missing, wrong kind, junk weights)."""


def _wanted(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in FETCH_PATTERNS)


def _download_s3(uri: str, cache_dir: Path, storage: Any = None) -> Path:
    final = cache_dir / "models" / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    if (final / "config.json").is_file():
        return final
    fs, path = filesystem(uri, storage)
    names = [p for p in fs.ls(path, detail=False) if _wanted(Path(p).name)]
    if not any(Path(n).name == "config.json" for n in names):
        raise CheckpointError(f"no config.json under '{uri}': not a Hugging Face checkpoint")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=final.parent))
    try:
        copy_tree(uri, tmp, storage, include=lambda rel: "/" not in rel and _wanted(rel))
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
    cache = Path(cache_dir) if cache_dir else cache_root()
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
        what = "a file, not a checkpoint directory" if Path(ref).expanduser().exists() else \
            "neither 'tiny', an existing directory, an s3:// prefix nor a hub id like " \
            "'Qwen/Qwen2.5-VL-3B-Instruct'"
        raise CheckpointError(f"model {ref!r} is {what}")
    check_model_dir(out)
    return out


def check_model_dir(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The config of a supported checkpoint with safetensors weights, else a clear error."""
    d = Path(model_dir)
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"'{d}' holds no config.json: not a Hugging Face checkpoint")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"'{cfg_file}' is not JSON ({exc})") from None
    mt = cfg.get("model_type") if isinstance(cfg, dict) else None
    if mt not in SUPPORTED_TYPES:
        raise CheckpointError(f"model type {mt!r} in '{d}' is not supported; allowed: "
                              f"{', '.join(SUPPORTED_TYPES)}")
    weights = sorted(d.glob("*.safetensors"))
    if not weights:
        raise CheckpointError(f"'{d}' has no .safetensors weights (pickled weights are refused)")
    for w in weights:
        check_safetensors(w)
    return cfg


def check_safetensors(path: str | os.PathLike) -> None:
    """Read a .safetensors file's header (not its tensors): junk bytes or a truncated file fail
    here, in milliseconds, with the file's name, instead of deep inside a worker's model load."""
    p = Path(path)
    size = p.stat().st_size

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"weights file '{p}' is damaged ({why}); copy the checkpoint "
                               f"again or point 'model' at another one")
    with open(p, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, no safetensors header")
        n = int.from_bytes(head, "little")
        if n <= 1 or 8 + n > size or n > 100_000_000:
            raise bad("not a safetensors file: bad header length")
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError):
            raise bad("not a safetensors file: unreadable header") from None
    if not isinstance(header, dict):
        raise bad("not a safetensors file: unreadable header")
    end = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        offs = t.get("data_offsets") if isinstance(t, dict) else None
        if not (isinstance(offs, list) and len(offs) == 2):
            raise bad(f"tensor {name!r} has no data offsets")
        end = max(end, int(offs[1]))
    if 8 + n + end > size:
        raise bad(f"truncated: {size} bytes, the header needs {8 + n + end}")


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
