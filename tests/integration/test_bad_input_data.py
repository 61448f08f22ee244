"""Issue 21: bad image files and damaged datasets, through every verb that reads them.

Each case asserts the exit code, a message that names the bad thing, no traceback, and that the
good part of the work is kept (rows for the good files, restored images for the good files).
Config, path, service, checkpoint and interrupt cases live in test_bad_input_cli.py.

Cost: one `generate` of a mixed folder (module fixture) gives the per-file generate cases and a
finished dataset; damaged copies of that dataset feed eval/restore/sft/rl, which fail before
any work; three more small `generate` runs resume damaged outputs.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dutrain.cli import main
from dutrain.io.dataset import COLUMNS, read_table

GEN = ["image_size=32", "samples=24", "rows_per_shard=8", "variants_per_crop=2",
       "ood_fraction=0", "progress=false", "tracking.enabled=false", "workers=2"]
OFF = "tracking.enabled=false"
IDENTITY = {"degradations": []}
ROOT = os.geteuid() == 0


def _rgb(seed: int, h: int = 64, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _enc(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(t: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data))


def _png_raw(w: int, h: int, depth: int, colour: int, raw: bytes) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour,
                                                                0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


GREY16 = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16 + 100).astype(np.uint16)
RGB16 = (np.random.default_rng(7).integers(0, 65536, (64, 64, 3))).astype(np.uint16)


def _rgb16_png(a: np.ndarray) -> bytes:
    h, w, _ = a.shape
    rows = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))
    return _png_raw(w, h, 16, 2, rows)


def _exif_rotated() -> bytes:
    im = Image.fromarray(_rgb(9, 48, 64))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise for viewing
    return _enc(im, "JPEG", quality=95, exif=exif.tobytes())


def _gif() -> bytes:
    frames = [Image.fromarray(_rgb(s)).convert("P") for s in (10, 11)]
    return _enc(frames[0], "GIF", save_all=True, append_images=frames[1:])


def _corrupt_data() -> bytes:
    b = bytearray(_enc(Image.fromarray(_rgb(19))))
    for i in range(200, 260):  # inside the compressed pixels
        b[i] ^= 0x5A
    return bytes(b)


def _bad_crc() -> bytes:
    b = bytearray(_enc(Image.fromarray(_rgb(12))))
    b[29] ^= 0xFF  # the IHDR CRC
    return bytes(b)


# name → (generate: "used" or a reject reason; restore: "restored" or a skip reason)
CASES: dict[str, tuple[str, str]] = {
    "empty.png": ("empty file (0 bytes)", "empty file (0 bytes)"),
    "truncated.png": ("corrupt or truncated", "corrupt or truncated"),
    "truncated.jpg": ("corrupt or truncated", "corrupt or truncated"),
    "text.png": ("not an image Pillow can identify", "not an image Pillow can identify"),
    "pdf.jpg": ("not an image Pillow can identify", "not an image Pillow can identify"),
    "bad_crc.png": ("not an image Pillow can identify", "not an image Pillow can identify"),
    "bomb.png": ("decompression-bomb guard: 12000x12000", "decompression-bomb guard: 12000x12000"),
    "corrupt_data.png": ("corrupt or truncated", "corrupt or truncated"),
    "float.tif": ("unsupported image mode 'F'", "unsupported image mode 'F'"),
    "loop.png": ("cannot read: Too many levels of symbolic links",
                 "cannot read: Too many levels of symbolic links"),
    "dangling.png": ("cannot read", "cannot read: No such file or directory"),
    "tiny.png": ("too small: 4x4", "restored"),
    "bad\\xff.png": ("file name is not valid UTF-8", "restored"),
    "grey16.png": ("used", "restored"),
    "rgb16.png": ("used", "restored"),
    "cmyk.jpg": ("used", "restored"),
    "palette_alpha.png": ("used", "restored"),
    "rgba.png": ("used", "restored"),
    "grey_alpha.png": ("used", "restored"),
    "one_bit.png": ("used", "restored"),
    "animated.gif": ("used", "restored"),
    "jpeg_named.png": ("used", "restored"),
    "upper.PNG": ("used", "restored"),
    "exif_rotated.jpg": ("used", "restored"),
    "good.png": ("used", "restored"),
}
if not ROOT:  # root reads every file whatever its mode
    CASES["no_permission.png"] = ("Permission denied", "cannot read: Permission denied")
RESTORE_ONLY = {"folder.png": "cannot read: Is a directory"}  # generate walks into it
GENERATE_ONLY = {"folder.png/inner.png": "used"}  # a folder named x.png is just a folder
CONVERSIONS = {"grey16.png": "16-bit->8-bit", "cmyk.jpg": "cmyk->rgb",
               "palette_alpha.png": "palette+alpha->rgb on white",
               "rgba.png": "alpha->rgb on white",
               "grey_alpha.png": "alpha->rgb on white", "one_bit.png": "gray->rgb",
               "animated.gif": "palette->rgb"}
GIF_NAME = "animated.gif"  # restore lists no .gif: only generate reads it


def make_corpus(d: Path) -> Path:
    d.mkdir()
    rgb = _rgb(0)
    files = {
        "empty.png": b"",
        "truncated.png": _enc(Image.fromarray(rgb))[:400],
        "truncated.jpg": _enc(Image.fromarray(rgb), "JPEG")[:2000],
        "text.png": b"this is a text file with an image name\n",
        "pdf.jpg": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
        "bad_crc.png": _bad_crc(),
        "bomb.png": _png_raw(12000, 12000, 8, 2, b"\0" * 99),  # header only: 1.4e8 pixels
        "corrupt_data.png": _corrupt_data(),
        "tiny.png": _enc(Image.fromarray(rgb[:4, :4])),
        "grey16.png": _enc(Image.fromarray(GREY16)),
        "rgb16.png": _rgb16_png(RGB16),
        "cmyk.jpg": _enc(Image.fromarray(_rgb(1)).convert("CMYK"), "JPEG", quality=90),
        "palette_alpha.png": _enc(Image.fromarray(_rgb(2)).convert("P"), transparency=3),
        "rgba.png": _enc(Image.fromarray(np.dstack([_rgb(3), _rgb(4)[..., :1]]))),
        "grey_alpha.png": _enc(Image.fromarray(_rgb(5)[..., :2].copy())),
        "one_bit.png": _enc(Image.fromarray(_rgb(6)[..., 0] > 127)),
        "animated.gif": _gif(),
        "jpeg_named.png": _enc(Image.fromarray(_rgb(8)), "JPEG", quality=90),
        "upper.PNG": _enc(Image.fromarray(_rgb(13))),
        "exif_rotated.jpg": _exif_rotated(),
        "good.png": _enc(Image.fromarray(_rgb(14))),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    if not ROOT:
        (d / "no_permission.png").write_bytes(_enc(Image.fromarray(_rgb(15))))
        (d / "no_permission.png").chmod(0)
    with open(os.path.join(os.fsencode(d), b"bad\xff.png"), "wb") as fh:
        fh.write(_enc(Image.fromarray(_rgb(16))))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(17).random((64, 64)).astype(np.float32)).save(
        buf, format="TIFF")
    (d / "float.tif").write_bytes(buf.getvalue())
    (d / "loop.png").symlink_to(d / "loop.png")
    (d / "dangling.png").symlink_to(d / "does-not-exist.png")
    (d / "folder.png").mkdir()
    (d / "folder.png" / "inner.png").write_bytes(_enc(Image.fromarray(_rgb(18))))
    return d


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err, cap.err[-3000:]
    return code, cap.out, cap.err


# --------------------------------------------------------------------------- bad image files

@pytest.fixture(scope="module")
def mixed(ray_local, tmp_path_factory):
    """One `generate` of the mixed folder; its output is the finished dataset the damage cases
    copy. capsys is function-scoped, so this fixture captures with redirect_stderr itself."""
    import contextlib
    import sys
    d = tmp_path_factory.mktemp("bad-data")
    src = make_corpus(d / "mixed")
    out = d / "ds"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["generate", f"output={out}", f"sources=[{src}]", *GEN])
        sys.stderr.flush()
    yield {"src": src, "out": out, "code": code, "err": err.getvalue(),
           "card": json.loads((out / "dataset_card.json").read_text()) if code == 0 else {}}
    if not ROOT:
        (src / "no_permission.png").chmod(0o644)


def test_generate_keeps_the_good_files_of_a_mixed_folder(mixed):
    assert mixed["code"] == 0, mixed["err"]
    assert "Traceback" not in mixed["err"]
    card = mixed["card"]
    assert card["counts"]["rows"] == 24
    used = set(read_table(str(mixed["out"]), columns=["source_id"]).column("source_id")
               .to_pylist())
    want = {n for n, (g, _) in CASES.items() if g == "used"} | set(GENERATE_ONLY)
    assert used <= {f"mixed/{n}" for n in want} and len(used) >= 6
    assert card["sources"]["used"] == len(want)
    assert card["sources"]["rejected"] == sum(g != "used" for g, _ in CASES.values())


@pytest.mark.parametrize("name", sorted(CASES))
def test_generate_file_case(mixed, name):
    expect = CASES[name][0]
    card = mixed["card"]
    rejects = {r["source_id"]: r["reason"] for r in card["rejects"]}
    sid = f"mixed/{name}"
    if expect == "used":
        assert sid not in rejects
        assert sid in {p for p in _plan_sources(mixed["out"])}
        if name in CONVERSIONS:
            assert _plan_notes(mixed["out"])[sid] == CONVERSIONS[name]
    else:
        assert expect in rejects[sid], rejects.get(sid)
        assert f"rejected {sid}: {rejects[sid]}" in mixed["err"]  # and said on stderr


def test_generate_folder_named_like_an_image_is_walked(mixed):
    assert "mixed/folder.png/inner.png" in _plan_sources(mixed["out"])


def _plan_sources(out: Path) -> set[str]:
    return {p["source_id"] for p in json.loads((out / "_plan.json").read_text())["sources"]}


def _plan_notes(out: Path) -> dict[str, str]:
    return {p["source_id"]: p["note"] for p in json.loads((out / "_plan.json").read_text())
            ["sources"]}


def test_generate_with_no_usable_file_says_so(ray_local, tmp_path, capsys):
    src = tmp_path / "allbad"
    src.mkdir()
    (src / "empty.png").write_bytes(b"")
    with open(os.path.join(os.fsencode(src), b"x\xfe.png"), "wb") as fh:
        fh.write(_enc(Image.fromarray(_rgb(0))))
    code, out, err = _run(capsys, "generate", f"output={tmp_path / 'o'}", f"sources=[{src}]", *GEN)
    assert code == 2
    assert "no usable source image" in err and "rejected: 2 of 2" in err
    assert "allbad/x\\xfe.png: file name is not valid UTF-8" in err


@pytest.fixture(scope="module")
def restored(mixed, tmp_path_factory, capsys_module):
    out = tmp_path_factory.mktemp("restored")
    ann = out / "identity.json"
    ann.write_text(json.dumps(IDENTITY))
    code, o, err = capsys_module(["restore", f"input={mixed['src']}", f"annotation={ann}",
                                  f"output={out / 'r'}", OFF])
    return {"code": code, "out": o, "err": err, "dir": out / "r"}


@pytest.fixture(scope="module")
def capsys_module():
    import contextlib

    def run(argv):
        o, e = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(e), contextlib.redirect_stdout(o):
            code = main(argv)
        assert "Traceback" not in o.getvalue() + e.getvalue(), e.getvalue()[-3000:]
        return code, o.getvalue(), e.getvalue()
    return run


def _stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).stem)


def test_restore_keeps_the_good_files_of_a_mixed_folder(restored):
    assert restored["code"] == 0, restored["err"]
    skipped = [json.loads(x) for x in (restored["dir"] / "rejected.jsonl").read_text()
               .splitlines()]
    bad = {n for n, (_, r) in CASES.items() if r != "restored"} | set(RESTORE_ONLY)
    assert {s["image"] for s in skipped} == bad
    assert f"{len(bad)} image(s) skipped" in restored["err"]
    good = {n for n, (_, r) in CASES.items() if r == "restored" and n != GIF_NAME}
    assert f"restored {len(good)} image(s)" in restored["out"]
    assert f"note: {len(bad)} image(s) could not be read" in restored["out"]


@pytest.mark.parametrize("name", sorted(n for n in {**CASES, **RESTORE_ONLY} if n != GIF_NAME))
def test_restore_file_case(restored, name):
    expect = {**{n: r for n, (_, r) in CASES.items()}, **RESTORE_ONLY}[name]
    files = {p.name for p in (restored["dir"] / "restored").iterdir()}
    if expect == "restored":
        assert f"{_stem(name)}.png" in files
    else:
        assert f"{_stem(name)}.png" not in files
        skipped = {s["image"]: s["reason"] for s in map(
            json.loads, (restored["dir"] / "rejected.jsonl").read_text().splitlines())}
        assert expect in skipped[name], skipped.get(name)
        assert f"dutrain restore: warning: skipped {name}: " in restored["err"]


def test_restore_decodes_16_bit_like_generate(restored):
    """The saturation bug: 16-bit grey came out 255 almost everywhere; now high byte, as in
    generate (the identity annotation leaves the decoded image as it is)."""
    grey = np.asarray(Image.open(restored["dir"] / "restored" / "grey16.png"))
    np.testing.assert_array_equal(grey, np.repeat((GREY16 >> 8).astype(np.uint8)[..., None], 3, 2))
    assert (grey == 255).mean() < 0.05
    rgb = np.asarray(Image.open(restored["dir"] / "restored" / "rgb16.png"))
    np.testing.assert_array_equal(rgb, (RGB16 >> 8).astype(np.uint8))
    rot = np.asarray(Image.open(restored["dir"] / "restored" / "exif_rotated.png"))
    assert rot.shape == (64, 48, 3)  # the EXIF orientation is applied


def test_restore_with_no_readable_image_exits_2(tmp_path, capsys):
    d = tmp_path / "allbad"
    d.mkdir()
    (d / "a.png").write_bytes(b"")
    (d / "b.jpg").write_text("not a jpeg")
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps(IDENTITY))
    code, out, err = _run(capsys, "restore", f"input={d}", f"annotation={ann}",
                          f"output={tmp_path / 'o'}", OFF)
    assert code == 2
    assert "none of the 2 image(s)" in err and "a.png: empty file" in err
    assert "b.jpg: not an image" in err and len(err.strip().splitlines()) == 1
    code, out, err = _run(capsys, "restore", f"input={d / 'a.png'}", f"annotation={ann}",
                          f"output={tmp_path / 'o'}", OFF)
    assert code == 2 and "a.png: empty file (0 bytes)" in err


# ------------------------------------------------------------------------- damaged datasets

def _copy(mixed, tmp_path: Path, name: str = "ds") -> Path:
    assert mixed["code"] == 0, mixed["err"]
    dst = tmp_path / name
    shutil.copytree(mixed["out"], dst)
    return dst


def _parts(ds: Path) -> list[str]:
    return sorted(p.name for p in ds.glob("part-*.parquet"))


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[:len(data) // 2])


def _eval(capsys, ds: Path, tmp_path: Path) -> tuple[int, str]:
    code, _, err = _run(capsys, "eval", f"dataset={ds}", "model=baseline:prior", OFF,
                        f"output={tmp_path / 'eval'}", "splits=[train]")
    return code, err


def _unfinished(mixed, tmp_path: Path) -> Path:
    """A generation killed part-way: no card, the last part file not written yet."""
    ds = _copy(mixed, tmp_path, "unfinished")
    (ds / "dataset_card.json").unlink()
    (ds / "preview.png").unlink()
    (ds / _parts(ds)[-1]).unlink()
    return ds


def test_eval_refuses_an_unfinished_dataset(mixed, tmp_path, capsys):
    ds = _unfinished(mixed, tmp_path)
    missing = _parts(mixed["out"])[-1]
    code, err = _eval(capsys, ds, tmp_path)
    assert code == 2
    assert "is unfinished" in err and f"1 of 3 part files missing: {missing}" in err
    assert "rerun `dutrain generate`" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_restore_refuses_an_unfinished_dataset(mixed, tmp_path, capsys):
    ds = _unfinished(mixed, tmp_path)
    code, _, err = _run(capsys, "restore", f"input={ds}", "split=train",
                        f"annotation={_identity(tmp_path)}", f"output={tmp_path / 'r'}", OFF)
    assert code == 2 and "is unfinished" in err and _parts(mixed["out"])[-1] in err


def _identity(tmp_path: Path) -> Path:
    p = tmp_path / "identity.json"
    p.write_text(json.dumps(IDENTITY))
    return p


def test_rl_refuses_an_unfinished_dataset(mixed, tmp_path, capsys):
    ds = _unfinished(mixed, tmp_path)
    code, _, err = _run(capsys, "rl", "model=tiny", f"dataset={ds}", f"output={tmp_path / 'rl'}",
                        OFF)
    assert code == 2 and "is unfinished" in err and _parts(mixed["out"])[-1] in err


def test_sft_refuses_an_unfinished_dataset(mixed, tmp_path, capsys):
    ds = _unfinished(mixed, tmp_path)
    code, _, err = _run(capsys, "sft", "model=tiny", f"dataset={ds}",
                        f"output={tmp_path / 'sft'}", OFF)
    assert code == 2 and "is unfinished" in err and _parts(mixed["out"])[-1] in err


def test_generate_resume_redoes_a_truncated_part_file(mixed, tmp_path, capsys):
    ds = _unfinished(mixed, tmp_path)
    part = _parts(ds)[0]
    _truncate(ds / part)
    with pytest.raises(Exception):  # what a reader met before: a pyarrow error
        pq.ParquetFile(ds / part)
    code, _, err = _run(capsys, "generate", f"output={ds}", f"sources=[{mixed['src']}]", *GEN)
    assert code == 0, err
    assert f"part file {part} is damaged" in err and "writing it again" in err
    assert "(16 written now, 1 shards kept)" in err  # the intact part kept, two redone
    assert read_table(str(ds)).equals(read_table(str(mixed["out"])))


def test_generate_resume_rebuilds_a_damaged_plan(mixed, tmp_path, capsys):
    ds = _unfinished(mixed, tmp_path)
    plan = ds / "_plan.json"
    plan.write_text(plan.read_text()[:100])
    code, _, err = _run(capsys, "generate", f"output={ds}", f"sources=[{mixed['src']}]", *GEN)
    assert code == 0, err
    assert "_plan.json" in err and "is damaged" in err and "2 shards kept" in err
    assert read_table(str(ds)).equals(read_table(str(mixed["out"])))


def test_eval_names_a_truncated_part_file_of_a_finished_dataset(mixed, tmp_path, capsys):
    ds = _copy(mixed, tmp_path)
    part = _parts(ds)[1]
    _truncate(ds / part)
    code, err = _eval(capsys, ds, tmp_path)
    assert code == 2 and f"part file '{part}' is damaged or not Parquet" in err
    assert len(err.strip().splitlines()) == 1


def test_restore_names_a_truncated_part_file(mixed, tmp_path, capsys):
    ds = _copy(mixed, tmp_path)
    part = _parts(ds)[0]
    _truncate(ds / part)
    code, _, err = _run(capsys, "restore", f"input={ds}", "split=train",
                        f"annotation={_identity(tmp_path)}", f"output={tmp_path / 'r'}", OFF)
    assert code == 2 and f"part file '{part}' is damaged" in err


def test_eval_names_a_part_file_missing_from_a_finished_dataset(mixed, tmp_path, capsys):
    ds = _copy(mixed, tmp_path)
    part = _parts(ds)[2]
    (ds / part).unlink()
    code, err = _eval(capsys, ds, tmp_path)
    assert code == 2 and f"1 of 3 part files listed in its dataset_card.json are missing: {part}" \
        in err


def test_eval_names_a_damaged_card(mixed, tmp_path, capsys):
    ds = _copy(mixed, tmp_path)
    (ds / "dataset_card.json").write_text('{"format": "dutrain-data')
    code, err = _eval(capsys, ds, tmp_path)
    assert code == 2 and "dataset_card.json is damaged" in err


def test_generate_refuses_an_output_with_a_damaged_card(mixed, tmp_path, capsys):
    ds = _copy(mixed, tmp_path)
    (ds / "dataset_card.json").write_text("{")
    code, _, err = _run(capsys, "generate", f"output={ds}", f"sources=[{mixed['src']}]", *GEN)
    assert code == 2 and "damaged dataset_card.json" in err and "overwrite=true" in err


def test_eval_on_an_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = _eval(capsys, tmp_path / "empty", tmp_path)
    assert code == 2 and "no Parquet part files" in err


def test_eval_on_a_parquet_file_of_another_schema(tmp_path, capsys):
    ds = tmp_path / "foreign"
    ds.mkdir()
    pq.write_table(pa.table({"id": [1, 2], "text": ["a", "b"]}), ds / "data.parquet")
    code, err = _eval(capsys, ds, tmp_path)
    assert code == 2 and "'data.parquet' is not a dutrain part file" in err
    assert "lacks the column(s) sample_id" in err


def test_eval_on_a_text_file_named_parquet(tmp_path, capsys):
    ds = tmp_path / "fake"
    ds.mkdir()
    (ds / "part-00000.parquet").write_text("sample_id,split\nx,train\n")
    code, err = _eval(capsys, ds, tmp_path)
    assert code == 2 and "part file 'part-00000.parquet' is damaged or not Parquet" in err


def test_eval_on_an_empty_dataset(tmp_path, capsys):
    ds = tmp_path / "zero"
    ds.mkdir()
    schema = pa.schema([(c, pa.int64() if c == "seed" else pa.int32() if c in ("width", "height")
                         else pa.binary() if c in ("clean", "degraded") else pa.string())
                        for c in COLUMNS])
    pq.write_table(schema.empty_table(), ds / "part-00000.parquet")
    code, err = _eval(capsys, ds, tmp_path)
    assert code == 2 and "has no rows in split(s) train" in err


# ------------------------------------------------------------------------------- full disk

def _can_mount_tmpfs() -> bool:
    """A tiny tmpfs without root: a user + mount namespace (`unshare -Urm`)."""
    import subprocess
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, timeout=20)
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs `unshare -Urm` to mount "
                                 "a tiny tmpfs without root (user namespaces)")


def _in_small_disk(tmp_path: Path, script: str) -> str:
    import subprocess
    import sys
    mnt = tmp_path / "small"
    mnt.mkdir()
    bin_ = Path(sys.executable).parent
    body = script.format(mnt=mnt, dutrain=bin_ / "dutrain", python=sys.executable)
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", body], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    return proc.stdout + proc.stderr


@needs_tmpfs
def test_full_disk_stops_generate_in_one_line_and_a_rerun_resumes(tmp_path):
    gen = ("{dutrain} generate output={mnt}/ds sources=[builtin] image_size=64 samples=64 "
           "rows_per_shard=8 ood_fraction=0 progress=false tracking.enabled=false "
           "ray.num_cpus=1 workers=1")
    log = _in_small_disk(tmp_path, f"""
mount -t tmpfs -o size=120k tmpfs {{mnt}}
{gen} 2>&1; echo "exit1=$?"
ls {{mnt}}/ds | grep -c '^part-' | sed 's/^/parts1=/'
mount -o remount,size=8m tmpfs {{mnt}}
{gen} 2>&1; echo "exit2=$?"
{{python}} -c "from dutrain.io.dataset import read_table as t; print('rows=', \\
    t('{{mnt}}/ds').num_rows)"
""")
    assert "Traceback" not in log, log[-4000:]
    assert "exit1=2" in log, log[-3000:]
    assert "dutrain generate: error: no space left on device" in log
    kept = int(log.split("parts1=")[1].split()[0])
    assert kept >= 1  # the part files written before the disk filled are kept …
    assert "exit2=0" in log and f"{kept} shards kept" in log  # … and the rerun resumes
    assert "rows= 64" in log


@needs_tmpfs
def test_full_disk_stops_restore_in_one_line(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(4):
        Image.fromarray(_rgb(i, 256, 256)).save(src / f"im{i}.png")
    (tmp_path / "id.json").write_text(json.dumps(IDENTITY))
    log = _in_small_disk(tmp_path, f"""
mount -t tmpfs -o size=64k tmpfs {{mnt}}
{{dutrain}} restore input={src} annotation={tmp_path / 'id.json'} output={{mnt}}/r \
    tracking.enabled=false 2>&1; echo "exit=$?"
""")
    assert "Traceback" not in log, log[-4000:]
    assert "exit=2" in log and "dutrain restore: error: no space left on device" in log, log
