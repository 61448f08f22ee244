"""Local paths and s3:// URIs behind one fsspec interface.

S3 honours the standard AWS_* variables (credentials, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION) and
`storage.endpoint_url` / `storage.region` from the config; credentials never come from config.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import fsspec


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def s3_options(storage: Any = None) -> dict[str, Any]:
    """s3fs options from the config's storage section and the environment."""
    endpoint = getattr(storage, "endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL") \
        or os.environ.get("AWS_ENDPOINT_URL_S3")
    region = getattr(storage, "region", None) or os.environ.get("AWS_DEFAULT_REGION") \
        or os.environ.get("AWS_REGION")
    client_kwargs: dict[str, Any] = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if region:
        client_kwargs["region_name"] = region
    return {"client_kwargs": client_kwargs} if client_kwargs else {}


def filesystem(uri: str, storage: Any = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or URI."""
    uri = str(uri)
    if uri.startswith("s3://"):
        import s3fs  # lazy: optional, slow to import, only for s3://
        return s3fs.S3FileSystem(**s3_options(storage)), uri[len("s3://"):]
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if is_remote(uri):
        fs, path = fsspec.core.url_to_fs(uri)
        return fs, path
    return fsspec.filesystem("file"), os.path.abspath(uri)


def absolute(uri: str) -> str:
    """A local path made absolute (Ray workers run in another directory); URIs unchanged."""
    return uri if is_remote(uri) else str(Path(uri).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *[p.strip("/") for p in parts]])


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike, storage: Any = None,
              include: Callable[[str], bool] | None = None) -> list[str]:
    """Copy every file under the directory `src` to the same relative path under `dst`; each
    is a local path or a URI (s3://...). Files already at `dst` are overwritten, others kept.
    `include(relative_path)` (posix, e.g. "model/config.json") picks the files to copy.
    Returns the relative paths copied, sorted."""
    src_remote, dst_remote = is_remote(str(src)), is_remote(str(dst))
    sfs, spath = filesystem(str(src), storage)
    dfs, dpath = filesystem(str(dst), storage)
    spath, dpath = spath.rstrip("/"), dpath.rstrip("/")
    rels = sorted(f[len(spath) + 1:] for f in sfs.find(spath))
    rels = [r for r in rels if include is None or include(r)]
    for rel in rels:
        source, target = f"{spath}/{rel}", f"{dpath}/{rel}"
        dfs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        if not src_remote:
            dfs.put_file(source, target)
        elif not dst_remote:
            sfs.get_file(source, target)
        else:
            with sfs.open(source, "rb") as a, dfs.open(target, "wb") as b:
                shutil.copyfileobj(a, b)
    return rels
