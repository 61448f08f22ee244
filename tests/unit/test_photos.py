"""The packaged-photo manifest, the preparation that makes a clean photo clean, cache checks."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from dutrain.config import load_config
from dutrain.data import generate as gen
from dutrain.data import photos
from dutrain.data.plan import split_of
from dutrain.data.sources import list_sources
from dutrain.evaluate.estimators import noise_estimate


def test_manifest_names_package_path_hash_license_author_and_reason_of_every_photo():
    m = photos.manifest()
    ids = [p["id"] for p in m["photos"]]
    assert len(ids) == len(set(ids)) >= 50
    for p in m["photos"]:
        assert p["group"] in m["packages"] and p["id"].startswith(p["group"] + "/")
        assert re.fullmatch(r"[0-9a-f]{64}", p["sha256"])
        assert p["path"] and p["license"] and p["author"] and p["why"]
    for g, pkg in m["packages"].items():
        assert pkg["kind"] in ("debian", "pypi") and pkg["name"] and pkg["version"]
        assert pkg["photos"] == sum(p["group"] == g for p in m["photos"])
    excluded = {e["id"] for e in m["excluded"]}
    assert not excluded & set(ids)


def test_every_split_holds_packaged_photos_and_a_photo_has_one_split():
    # demo fractions: val 0.1, test 0.2; the split is a function of the source id alone
    splits = {photos.source_id(p): split_of(photos.source_id(p), 0.1, 0.2)
              for p in photos.photo_entries()}
    counts = {s: list(splits.values()).count(s) for s in ("train", "val", "test")}
    assert all(n >= 3 for n in counts.values()), counts


def _jpeg(arr: np.ndarray, q: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="JPEG", quality=q)
    return out.getvalue()


def test_prepare_downscales_by_two_at_least_and_averages_noise_away():
    rng = np.random.default_rng(0)
    noisy = np.clip(128 + rng.normal(0, 12, (480, 640, 3)), 0, 255).astype(np.uint8)
    small = np.asarray(Image.open(io.BytesIO(photos.prepare(_jpeg(noisy, 95)))))
    assert small.shape == (240, 320, 3)  # 640 px wide: factor 2, not 640/512
    assert noise_estimate(small)[0] < 0.6 * noise_estimate(noisy)[0]
    big = np.full((1600, 2560, 3), 90, np.uint8)
    assert Image.open(io.BytesIO(photos.prepare(_jpeg(big, 80)))).size == (512, 320)


def _fake_cache(root, entries):
    installed = {}
    for i, p in enumerate(entries):
        png = photos.prepare(_jpeg(np.full((300, 400, 3), 40 + i, np.uint8), 90))
        path = photos.prepared_path(p, root)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        installed[p["id"]] = photos._sha256(png)
    (root / photos.INSTALLED).write_text(json.dumps(installed))


def test_listing_checks_the_cache_missing_is_an_error_or_a_warning_changed_always_an_error(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DUTRAIN_PHOTOS_DIR", str(tmp_path))
    group = photos.photo_entries("palapeli")
    _fake_cache(tmp_path, group[:-1])  # one photo of the group not installed
    with pytest.raises(photos.PhotoError, match=r"1 of 5 photos are not installed.*"
                                                r"python -m dutrain\.data\.photos install"):
        list_sources(["photos:palapeli"])
    refs = list_sources(["photos:palapeli", "builtin"], missing_photos_ok=True)
    assert "1 of 5 photos are not installed" in capsys.readouterr().err
    assert sorted(r.source_id for r in refs if r.source_id.startswith("photos/")) == \
        sorted(photos.source_id(p) for p in group[:-1])
    photos.prepared_path(group[0], tmp_path).write_bytes(b"not the installed file")
    with pytest.raises(photos.PhotoError, match="changed since it was installed"):
        list_sources(["photos:palapeli"], missing_photos_ok=True)
    with pytest.raises(photos.PhotoError, match="unknown photo group 'nope'.*caer"):
        list_sources(["photos:nope"])


def test_state_is_the_one_check_of_a_cached_photo(tmp_path):
    group = photos.photo_entries("palapeli")
    _fake_cache(tmp_path, group[:2])
    photos.prepared_path(group[1], tmp_path).write_bytes(b"not the installed file")
    assert [photos.state(p, tmp_path) for p in group[:3]] == \
        [photos.OK, photos.CHANGED, photos.MISSING]


def test_the_pipeline_lists_and_hashes_the_sources_once_and_hands_them_to_generate(
        tmp_path, monkeypatch):
    from dutrain.config.pipeline import PipelineConfig
    from dutrain.pipeline import preflight_pipeline, stage_runner

    monkeypatch.setenv("DUTRAIN_PHOTOS_DIR", str(tmp_path))
    _fake_cache(tmp_path, photos.photo_entries("palapeli"))
    hashed, sha256 = [], photos._sha256
    monkeypatch.setattr(photos, "_sha256", lambda data: hashed.append(1) or sha256(data))
    cfg = load_config(PipelineConfig, overrides=[
        f"workdir={tmp_path / 'w'}", "stages=[generate]", "tracking.enabled=false",
        "generate.sources=[photos:palapeli,builtin]"], verb="pipeline")
    refs = preflight_pipeline(cfg)  # before Ray starts
    assert len(hashed) == 5 and refs == gen.list_inputs(cfg.generate) and len(hashed) == 10
    got: list[object] = []
    monkeypatch.setattr(gen, "generate", lambda c, sources=None: got.append(sources))
    stage_runner(refs)("generate", cfg.generate)  # the stage takes the listing: no new hashing
    assert got == [refs] and len(hashed) == 10
    stage_runner(None)("generate", cfg.generate)  # nothing listed: generate lists itself
    assert got[-1] is None


def test_attribution_lists_license_and_author_of_the_photos_used_only():
    p = photos.photo_entries("lomiri")[0]
    out = photos.attribution([photos.source_id(p), "builtin/cat", "dead_leaves/00001"])
    assert out == [{"source_id": photos.source_id(p), "author": p["author"],
                    "license": p["license"],
                    "package": "debian:lomiri-wallpapers-16.04==20.04.0-2", "path": p["path"]}]
