"""`dutrain.io.storage.copy_tree` on local paths (and fsspec's in-memory filesystem as a remote)."""

from __future__ import annotations

from pathlib import Path

from dutrain.io.storage import copy_tree


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _make(root: Path) -> dict[str, bytes]:
    files = {"config.json": b"{}", "model.safetensors": b"\x00\x01" * 1000,
             "sub/deeper/state.json": b'{"step": 3}', ".hidden": b"h"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_copies_every_file_keeping_relative_paths(tmp_path):
    files = _make(tmp_path / "src")
    copied = copy_tree(tmp_path / "src", tmp_path / "new" / "dst")
    assert copied == sorted(files)
    assert _tree(tmp_path / "new" / "dst") == files
    assert _tree(tmp_path / "src") == files  # the source is left alone


def test_overwrites_existing_files_and_keeps_others(tmp_path):
    files = _make(tmp_path / "src")
    dst = tmp_path / "dst"
    (dst / "sub").mkdir(parents=True)
    (dst / "config.json").write_bytes(b"old")
    (dst / "sub" / "extra.txt").write_bytes(b"kept")
    copy_tree(str(tmp_path / "src") + "/", str(dst))
    assert _tree(dst) == {**files, "sub/extra.txt": b"kept"}


def test_include_picks_files_by_relative_path(tmp_path):
    _make(tmp_path / "src")
    top_json = copy_tree(tmp_path / "src", tmp_path / "dst",
                         include=lambda rel: "/" not in rel and rel.endswith(".json"))
    assert top_json == ["config.json"]
    assert _tree(tmp_path / "dst") == {"config.json": b"{}"}


def test_round_trip_through_a_remote_filesystem(tmp_path):
    files = _make(tmp_path / "src")
    uri = "memory://dutrain-test-copy-tree/run"
    assert copy_tree(tmp_path / "src", uri) == sorted(files)
    assert copy_tree(uri, f"{uri}-copy") == sorted(files)
    copy_tree(f"{uri}-copy", tmp_path / "back")
    assert _tree(tmp_path / "back") == files
