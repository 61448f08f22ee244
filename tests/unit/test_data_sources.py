"""Source listing: directories, .txt lists, single files, builtin; stable, unique source ids."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dutrain.data.sources import (
    BUILTIN_IMAGES,
    BUILTIN_TRAIN_ONLY,
    SourceError,
    list_sources,
    load_builtin,
    load_source,
    read_bytes,
    train_only,
)
from dutrain.degrade.procedural import SIZE, dead_leaves
from dutrain.io.images import Rejected


def img(path, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)
    return path


def test_directory_is_recursive_sorted_and_filters_extensions(tmp_path):
    root = tmp_path / "photos"
    img(root / "b.png")
    img(root / "sub" / "a.JPG")
    (root / "notes.txt").write_text("not listed")
    (root / "fake.png").write_bytes(b"listed; the decoder rejects it")
    refs = list_sources([str(root)])
    assert [r.source_id for r in refs] == ["photos/b.png", "photos/fake.png", "photos/sub/a.JPG"]
    assert refs[2].uri == str(root / "sub" / "a.JPG")


def test_list_file_relative_paths_comments_and_ids(tmp_path):
    img(tmp_path / "imgs" / "x.png")
    lst = tmp_path / "list.txt"
    lst.write_text(f"# clean images\n\nimgs/x.png\n{tmp_path}/imgs/x.png\ns3://bucket/k/y.png\n")
    refs = list_sources([str(lst)])
    assert {r.source_id: r.uri for r in refs} == {
        "imgs/x.png": str(tmp_path / "imgs" / "x.png"),
        str(tmp_path / "imgs" / "x.png").lstrip("/"): str(tmp_path / "imgs" / "x.png"),
        "bucket/k/y.png": "s3://bucket/k/y.png"}


def test_single_file_and_builtin_combine(tmp_path):
    refs = list_sources(["builtin", str(img(tmp_path / "one.png"))])
    assert len(refs) == len(BUILTIN_IMAGES) + 1
    assert refs == sorted(refs, key=lambda r: r.source_id)
    assert "one.png" in {r.source_id for r in refs}


def test_duplicate_ids_and_bad_specs_are_errors(tmp_path):
    img(tmp_path / "a" / "same" / "x.png")
    img(tmp_path / "b" / "same" / "x.png")
    with pytest.raises(SourceError, match="comes from both"):
        list_sources([str(tmp_path / "a" / "same"), str(tmp_path / "b" / "same")])
    with pytest.raises(SourceError, match="not a directory, an image file"):
        list_sources([str(tmp_path / "missing")])
    with pytest.raises(SourceError, match="unsupported scheme"):
        list_sources(["gs://bucket/x"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no image files"):
        list_sources([str(tmp_path / "empty")])


def test_builtin_loads_offline_as_rgb():
    a, note = load_builtin("camera")
    assert a.dtype == np.uint8 and a.shape == (512, 512, 3) and note == "gray->rgb"
    b, note = load_source("builtin:astronaut", None, 10**8)
    assert b.shape == (512, 512, 3) and note == ""


def test_missing_file_is_a_reject(tmp_path):
    with pytest.raises(Rejected, match="cannot read"):
        read_bytes(str(tmp_path / "gone.png"))


def test_dead_leaves_spec_lists_numbered_procedural_images():
    refs = list_sources(["builtin", "dead_leaves:3"])
    procedural = [r for r in refs if r.source_id.startswith("dead_leaves/")]
    assert [(r.source_id, r.uri) for r in procedural] == [
        ("dead_leaves/00000", "dead_leaves:0"), ("dead_leaves/00001", "dead_leaves:1"),
        ("dead_leaves/00002", "dead_leaves:2")]
    # the procedural images and the built-ins that are not photos of a scene always train
    assert sorted(r.source_id for r in refs if train_only(r.uri)) == sorted(
        [r.source_id for r in procedural] + [f"builtin/{n}" for n in BUILTIN_TRAIN_ONLY])
    for bad in ("dead_leaves:0", "dead_leaves:-2", "dead_leaves:ten", "dead_leaves:"):
        with pytest.raises(SourceError, match="image count must be an integer"):
            list_sources([bad])


def test_dead_leaves_load_like_photos_and_depend_on_the_index_only():
    a, note = load_source("dead_leaves:7", None, 10 ** 8)
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8 and note == ""
    assert np.array_equal(a, dead_leaves(7)) and not np.array_equal(a, dead_leaves(8))
    # photo-like: many grey levels, edges, not flat and not noise
    grey = a.astype(np.float32).mean(axis=2)
    assert len(np.unique(a)) > 100 and grey.std() > 20
    assert np.abs(np.diff(grey, axis=1)).mean() < 0.25 * grey.std()
