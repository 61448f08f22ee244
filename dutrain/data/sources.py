"""Clean-image sources: local directories, S3 prefixes, .txt lists of URIs and `builtin`.

Each image becomes a `SourceRef` with a stable `source_id` (the split and every seed derive from
it, so it must not depend on the machine):
- directory ``/data/DIV2K_train_HR`` → ``DIV2K_train_HR/0001.png`` (its name, then the relative
  path; recursive, symlinked directories not followed);
- S3 prefix ``s3://bucket/imgs/div2k`` → ``div2k/0001.png`` (the prefix's last part, then the key
  below it);
- a single image file → its file name;
- ``list.txt`` → each line as written, without ``s3://`` or a leading ``/`` (blank lines and
  ``#`` comments skipped; relative paths are relative to the list's folder);
- ``builtin`` → ``builtin/<name>`` for the photos scikit-image ships (no network);
- ``photos`` / ``photos:GROUP`` → ``photos/GROUP/NAME`` for the packaged real photographs
  (`photos.py`: a committed manifest, installed offline into a cache);
- ``dead_leaves:N`` → ``dead_leaves/00000`` … for N procedural images (`procedural.py`); they
  are always in the train split (`train_only`), as are the built-ins that are not photographs of
  a scene (micrographs, astronomy: `BUILTIN_TRAIN_ONLY`): the held-out splits measure photos.
Only files with an image extension are listed; the decoder judges their content.
"""

from __future__ import annotations

import os
import posixpath
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from dutrain.degrade import to_rgb_uint8
from dutrain.degrade.procedural import DEAD_LEAVES, dead_leaves, parse_spec
from dutrain.errors import UserError
from dutrain.io.images import PERMANENT_ERRNOS, Rejected, decode_image
from dutrain.io.storage import filesystem
from dutrain.runtime.preflight import existing_dir, s3_errors

from . import photos

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm",
                    ".pgm", ".pnm")
#: scikit-image's natural photos that load offline (synthetic test patterns left out)
BUILTIN_IMAGES = ("astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee",
                  "coins", "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "moon",
                  "retina", "rocket", "stereo_motorcycle")
#: built-ins a user would not call a photo (micrographs, a fundus image, astronomy): train only
BUILTIN_TRAIN_ONLY = ("cell", "hubble_deep_field", "immunohistochemistry", "moon", "retina")
BUILTIN = "builtin"
_READ_TRIES = 3


@dataclass(frozen=True)
class SourceRef:
    source_id: str
    uri: str  # local absolute path, s3://bucket/key, or builtin:<name>


class SourceError(UserError, ValueError):
    """A source spec that cannot be listed (the message names it and what is allowed)."""


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _list_dir(root: str) -> list[SourceRef]:
    root = os.path.abspath(root)
    base = os.path.basename(root.rstrip("/")) or "root"
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            if _is_image(f):
                p = os.path.join(dirpath, f)
                rel = os.path.relpath(p, root).replace(os.sep, "/")
                out.append(SourceRef(f"{base}/{rel}", p))
    return out


def _list_s3(uri: str, storage: Any) -> list[SourceRef]:
    fs, path = filesystem(uri, storage)
    path = path.rstrip("/")
    base = posixpath.basename(path) or path
    try:
        keys = fs.find(path)
    except FileNotFoundError:
        keys = []
    return [SourceRef(f"{base}/{k[len(path):].lstrip('/')}", f"s3://{k}")
            for k in sorted(keys) if _is_image(k)]


def _list_file(spec: str, storage: Any) -> list[SourceRef]:
    fs, path = filesystem(spec, storage)
    try:
        with fs.open(path, "r", encoding="utf-8") as fh:
            lines = [ln.strip() for ln in fh.read().splitlines()]
    except UnicodeDecodeError as exc:
        raise SourceError(f"source list {spec!r} is not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})") from None
    folder = posixpath.dirname(spec) if spec.startswith("s3://") else os.path.dirname(
        os.path.abspath(spec))
    out = []
    for ln in lines:
        if not ln or ln.startswith("#"):
            continue
        if ln.startswith("s3://") or os.path.isabs(ln):
            uri = ln
        else:
            uri = f"{folder}/{ln}" if spec.startswith("s3://") else os.path.join(folder, ln)
        out.append(SourceRef(ln.removeprefix("s3://").lstrip("/"), uri))
    return out


def list_one(spec: str, storage: Any = None, missing_photos_ok: bool = False) -> list[SourceRef]:
    spec = str(spec)
    if spec == BUILTIN:
        return [SourceRef(f"{BUILTIN}/{n}", f"{BUILTIN}:{n}") for n in BUILTIN_IMAGES]
    if photos.is_photo_spec(spec):
        return [SourceRef(sid, path) for sid, path in photos.list_photos(spec, missing_photos_ok)]
    try:
        procedural = parse_spec(spec)
    except ValueError as exc:
        raise SourceError(str(exc)) from None
    if procedural is not None:
        return [SourceRef(f"{DEAD_LEAVES}/{i:05d}", f"{DEAD_LEAVES}:{i}")
                for i in range(procedural)]
    if spec.startswith("s3://"):
        if not spec.endswith(".txt"):  # a missing bucket, credentials, endpoint: one line
            existing_dir("sources", spec, storage, "an s3:// prefix of images")
        with s3_errors("sources", spec):
            return _list_file(spec, storage) if spec.endswith(".txt") else _list_s3(spec, storage)
    if "://" in spec:
        raise SourceError(f"source {spec!r}: unsupported scheme (allowed: local paths, s3://, "
                          f"'builtin', 'photos[:GROUP]', '{DEAD_LEAVES}:N')")
    if os.path.isdir(spec):
        return _list_dir(spec)
    if os.path.isfile(spec) and spec.endswith(".txt"):
        return _list_file(spec, storage)
    if os.path.isfile(spec) and _is_image(spec):
        return [SourceRef(os.path.basename(spec), os.path.abspath(spec))]
    raise SourceError(f"source {spec!r} is not a directory, an image file, an s3:// prefix, a .txt "
                      f"list of URIs, 'builtin', 'photos[:GROUP]' or '{DEAD_LEAVES}:N'")


def list_sources(specs: Iterable[str], storage: Any = None,
                 missing_photos_ok: bool = False) -> list[SourceRef]:
    """Every image of every source, sorted by source_id; a source_id seen twice is an error."""
    seen: dict[str, str] = {}
    refs: list[SourceRef] = []
    for spec in specs:
        found = list_one(spec, storage, missing_photos_ok)
        if not found and missing_photos_ok and photos.is_photo_spec(str(spec)):
            continue  # list_photos has warned: the other sources go on
        if not found:
            raise SourceError(f"source {spec!r} holds no image files (extensions: "
                              f"{', '.join(IMAGE_EXTENSIONS)})")
        for r in found:
            if r.source_id in seen:
                raise SourceError(f"source_id {r.source_id!r} comes from both "
                                  f"{seen[r.source_id]!r} and {spec!r}; source ids must be unique "
                                  f"(rename a folder or drop a source)")
            seen[r.source_id] = spec
            refs.append(r)
    return sorted(refs, key=lambda r: r.source_id)


def read_bytes(uri: str, storage: Any = None) -> bytes:
    """The file's bytes; transient read errors are retried, a missing file is Rejected."""
    fs, path = filesystem(uri, storage)
    for attempt in range(_READ_TRIES):
        try:
            with fs.open(path, "rb") as fh:
                return fh.read()
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise Rejected(f"cannot read: {type(exc).__name__}: {exc}") from None
        except OSError as exc:
            if exc.errno in PERMANENT_ERRNOS:  # a symlink loop, a folder: retrying cannot help
                raise Rejected(f"cannot read: {exc.strerror or type(exc).__name__}") from None
            if attempt == _READ_TRIES - 1:
                raise Rejected(f"read failed {_READ_TRIES} times: {type(exc).__name__}: {exc}") \
                    from None
            time.sleep(0.5 * 2 ** attempt)
    raise AssertionError("unreachable")


def load_builtin(name: str) -> tuple[np.ndarray, str]:
    import skimage.data  # lazy: slow to import, only for the named sample images
    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity) → the left view
        img = img[0]
    return to_rgb_uint8(img), ("gray->rgb" if img.ndim == 2 else "")


def train_only(uri: str) -> bool:
    """Procedural sources and non-photographic built-ins always train: the held-out splits
    measure photographs a user would recognise as photos."""
    return uri.startswith(f"{DEAD_LEAVES}:") or \
        uri in {f"{BUILTIN}:{n}" for n in BUILTIN_TRAIN_ONLY}


def load_source(uri: str, storage: Any, max_pixels: int) -> tuple[np.ndarray, str]:
    """(RGB uint8 image, conversion note) of one source; raises Rejected with the reason."""
    if uri.startswith(f"{BUILTIN}:"):
        return load_builtin(uri.split(":", 1)[1])
    if uri.startswith(f"{DEAD_LEAVES}:"):
        return dead_leaves(int(uri.split(":", 1)[1])), ""
    return decode_image(read_bytes(uri, storage), max_pixels)
