"""The `photos` source for real: installed from its Debian package, then generated from."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from dutrain.config import load_config
from dutrain.config.generate import GenerateConfig
from dutrain.data import photos
from dutrain.data.generate import generate
from dutrain.io.dataset import read_table

pytestmark = pytest.mark.skipif(not (shutil.which("apt-get") and shutil.which("dpkg-deb")),
                                reason="needs apt-get and dpkg-deb (Debian/Ubuntu)")


@pytest.fixture(scope="module")
def photo_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    res = photos.install(root, only=["palapeli"])  # the smallest package: 2 MB, 5 photos
    return root, res


def test_install_fetches_checks_and_prepares_and_a_rerun_skips(photo_cache, monkeypatch,
                                                               tmp_path):
    root, res = photo_cache
    ids = [p["id"] for p in photos.photo_entries("palapeli")]
    assert sorted(res["installed"]) == ids and not res["failed"]
    for p in photos.photo_entries("palapeli"):  # 1024-1620 px originals: long side 512
        assert max(Image.open(photos.prepared_path(p, root)).size) == photos.LONG_SIDE
    again = photos.install(root, only=["palapeli"])
    assert sorted(again["skipped"]) == ids and not again["installed"]
    # a package whose file no longer matches the manifest: that photo fails, with a warning
    m = json.loads(json.dumps(photos.manifest()))
    victim = next(p for p in m["photos"] if p["group"] == "palapeli")
    victim["sha256"] = "0" * 64
    monkeypatch.setattr(photos, "manifest", lambda: m)
    logs: list[str] = []
    res2 = photos.install(tmp_path, only=["palapeli"], log=logs.append)
    assert res2["failed"] == [victim["id"]] and "differs from the manifest" in logs[0]


def test_generate_from_photos_keeps_each_photo_in_one_split_and_credits_it(
        ray_local, photo_cache, tmp_path, monkeypatch):
    root, _ = photo_cache
    monkeypatch.setenv("DUTRAIN_PHOTOS_DIR", str(root))
    result = generate(load_config(GenerateConfig, overrides=[
        f"output={tmp_path / 'ds'}", "sources=[photos:palapeli,builtin]", "test_fraction=0.3",
        "image_size=64", "samples=240", "rows_per_shard=64", "progress=false",
        "tracking.enabled=false"]))
    table = read_table(str(tmp_path / "ds"), columns=["source_id", "split"])
    held_out = {"test", "ood"}  # ood rows are further crops of test photos
    seen: dict[str, set[str]] = {}
    for sid, split in zip(table.column("source_id").to_pylist(),
                          table.column("split").to_pylist()):
        seen.setdefault(sid, set()).add("test" if split in held_out else split)
    assert all(len(s) == 1 for s in seen.values()), seen
    used = sorted(s for s in seen if s.startswith("photos/"))
    assert used == sorted(photos.source_id(p) for p in photos.photo_entries("palapeli"))
    credits = result.card["attribution"]
    assert [c["source_id"] for c in credits] == used
    assert all(c["license"] and c["author"] and c["package"].startswith("debian:palapeli-data")
               for c in credits)
    for name in ("cell", "hubble_deep_field", "retina"):  # not photos of a scene: train only
        assert seen.get(f"builtin/{name}", {"train"}) == {"train"}
