"""Faults at the edges (issue 21): paths of the wrong kind, unusable outputs, junk checkpoints,
unreachable MLflow and S3, and Ctrl-C — through `dutrain.cli.main`, for every verb.

Each case asserts the exit code, one line naming the bad key/path/URI, no traceback, and that
the error was found before Ray started (`ray.init` is recorded, never called) and before work
already on disk was touched. Bad image files, damaged datasets and restore folders are in
test_bad_input_data.py. Cost: no model and no Ray start except the interrupt case (a subprocess).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BIN, ROOT, free_port
from PIL import Image

from dutrain.cli import main
from dutrain.io.dataset import COLUMNS

OFF = "tracking.enabled=false"


@pytest.fixture(autouse=True)
def ray_never_starts(monkeypatch):
    """Every case must fail before Ray starts: record any start instead of starting."""
    import ray
    started: list = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: started.append(k or a))
    # a session cluster (ray_local) of other modules must survive the pipeline case's shutdown
    monkeypatch.setattr(ray, "shutdown", lambda *a, **k: None)
    yield started
    assert started == [], f"Ray was started: {started}"


def fails(capsys, *argv: str, names: tuple[str, ...] = (), code: int = 2,
          within_s: float = 15.0) -> str:
    """Run `dutrain ARGV`; assert the exit code, one error line naming every `names`, no
    traceback, and that it took at most `within_s` seconds. Returns the error line."""
    t0 = time.monotonic()
    rc = main(list(argv))
    dt = time.monotonic() - t0
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err, cap.err[-3000:]
    assert rc == code, (rc, cap.err[-2000:])
    errors = [ln for ln in cap.err.splitlines() if ln.startswith(f"dutrain {argv[0]}: ")]
    assert len(errors) == 1, cap.err
    for n in names:
        assert str(n) in errors[0], (n, errors[0])
    assert dt < within_s, f"took {dt:.1f} s"
    return errors[0]


# ------------------------------------------------------------------------------ fixtures

def _png(seed: int = 0, size: int = 32) -> bytes:
    import io
    a = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A small readable dataset (one part file, every split), written directly."""
    root = tmp_path_factory.mktemp("ds")
    ann = json.dumps({"degradations": []})
    rows = [{"sample_id": f"s{i:03d}", "source_id": f"src{i % 3}", "split": split,
             "seed": i, "clean": _png(i), "degraded": _png(i + 100), "width": 32, "height": 32,
             "annotation": ann, "generator_version": "test"}
            for i, split in enumerate(["train"] * 10 + ["val"] * 2 + ["test"] * 2 + ["ood"])]
    pq.write_table(pa.Table.from_pylist(rows).select(list(COLUMNS)), root / "part-00000.parquet")
    return root


@pytest.fixture
def ckpt_dir(tmp_path) -> Path:
    """A checkpoint folder with a valid config.json (weights added per case)."""
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    return d


def _safetensors(tensors: int = 2, floats: int = 16) -> bytes:
    header, off = {}, 0
    for i in range(tensors):
        header[f"w{i}"] = {"dtype": "F32", "shape": [floats],
                           "data_offsets": [off, off + 4 * floats]}
        off += 4 * floats
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + bytes(off)


@pytest.fixture
def a_file(tmp_path) -> Path:
    f = tmp_path / "plain.txt"
    f.write_text("not a folder\n")
    return f


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused


# ------------------------------------------------------------------------------------- sft

def test_sft_dataset_is_a_file(capsys, a_file, tmp_path):
    fails(capsys, "sft", f"dataset={a_file}", f"output={tmp_path / 'o'}", OFF,
          names=("'dataset'", str(a_file), "is a file"))


def test_sft_dataset_does_not_exist(capsys, tmp_path):
    fails(capsys, "sft", f"dataset={tmp_path / 'nope'}", f"output={tmp_path / 'o'}", OFF,
          names=("'dataset'", str(tmp_path / "nope"), "does not exist"))


def test_sft_dataset_is_a_folder_of_images_not_a_dataset(capsys, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.png").write_bytes(_png())
    fails(capsys, "sft", f"dataset={imgs}", f"output={tmp_path / 'o'}", OFF,
          names=("'dataset'", str(imgs), "no Parquet part files"))


def test_sft_model_is_a_file(capsys, dataset, a_file, tmp_path):
    fails(capsys, "sft", f"dataset={dataset}", f"model={a_file}", f"output={tmp_path / 'o'}", OFF,
          names=("'model'", str(a_file), "a file, not a checkpoint folder"))


def test_sft_model_with_random_weight_bytes_keeps_the_previous_run(capsys, dataset, ckpt_dir,
                                                                    tmp_path):
    (ckpt_dir / "model.safetensors").write_bytes(os.urandom(4096))
    out = tmp_path / "o"
    (out / "train").mkdir(parents=True)
    (out / "train" / "keep.txt").write_text("earlier checkpoint")
    fails(capsys, "sft", f"dataset={dataset}", f"model={ckpt_dir}", f"output={out}",
          "resume=false", OFF, names=("'model'", str(ckpt_dir / "model.safetensors"), "damaged"))
    assert (out / "train" / "keep.txt").read_text() == "earlier checkpoint"  # not cleared


def test_sft_model_with_truncated_weights(capsys, dataset, ckpt_dir, tmp_path):
    (ckpt_dir / "model.safetensors").write_bytes(_safetensors()[:-40])
    fails(capsys, "sft", f"dataset={dataset}", f"model={ckpt_dir}", f"output={tmp_path / 'o'}",
          OFF, names=("model.safetensors", "truncated"))


def test_sft_output_is_a_file(capsys, dataset, a_file):
    fails(capsys, "sft", f"dataset={dataset}", f"output={a_file}", OFF,
          names=("'output'", str(a_file), "is a file"))
    assert a_file.read_text() == "not a folder\n"


def test_sft_output_below_a_file_cannot_be_created(capsys, dataset, a_file):
    fails(capsys, "sft", f"dataset={dataset}", f"output={a_file / 'run'}", OFF,
          names=("'output'", "cannot create", str(a_file)))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_sft_output_in_a_read_only_folder(capsys, dataset, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        fails(capsys, "sft", f"dataset={dataset}", f"output={ro / 'run'}", OFF,
              names=("'output'", "permission denied"))
    finally:
        ro.chmod(stat.S_IRWXU)


def test_sft_unreachable_mlflow_fails_fast(capsys, dataset, tmp_path):
    url = dead_url()
    fails(capsys, "sft", f"dataset={dataset}", f"output={tmp_path / 'o'}", f"tracking.uri={url}",
          names=(url, "unreachable", "tracking.enabled=false"), within_s=10)


# -------------------------------------------------------------------------------------- rl

def test_rl_model_folder_without_config(capsys, dataset, tmp_path):
    empty = tmp_path / "empty_ckpt"
    empty.mkdir()
    fails(capsys, "rl", f"dataset={dataset}", f"model={empty}", f"output={tmp_path / 'o'}", OFF,
          names=("'model'", str(empty), "no config.json"))


def test_rl_model_config_is_not_json(capsys, dataset, ckpt_dir, tmp_path):
    (ckpt_dir / "config.json").write_text("{ not json")
    fails(capsys, "rl", f"dataset={dataset}", f"model={ckpt_dir}", f"output={tmp_path / 'o'}",
          OFF, names=("'model'", "config.json", "not JSON"))


def test_rl_dataset_is_a_file(capsys, a_file, tmp_path):
    fails(capsys, "rl", f"dataset={a_file}", f"output={tmp_path / 'o'}", OFF,
          names=("'dataset'", str(a_file), "is a file"))


def test_rl_output_is_a_file(capsys, dataset, a_file):
    fails(capsys, "rl", f"dataset={dataset}", f"output={a_file}", OFF,
          names=("'output'", str(a_file)))


def test_rl_mlflow_host_that_does_not_answer(capsys, dataset, tmp_path):
    # a non-routable address: no answer at all (or at once 'unreachable' without a network)
    fails(capsys, "rl", f"dataset={dataset}", f"output={tmp_path / 'o'}",
          "tracking.uri=http://10.255.255.1:5000", names=("10.255.255.1", "tracking.enabled=false"),
          within_s=10)


# ------------------------------------------------------------------------------------ eval

def test_eval_dataset_does_not_exist_keeps_earlier_results(capsys, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    fails(capsys, "eval", f"dataset={tmp_path / 'none'}", "model=baseline:prior",
          f"output={out}", OFF, names=("'dataset'", str(tmp_path / "none")))
    assert (out / "metrics.json").read_text() == "{}"


def test_eval_predictions_is_a_folder(capsys, dataset, tmp_path):
    fails(capsys, "eval", f"dataset={dataset}", f"predictions={tmp_path}",
          f"output={tmp_path / 'o'}", OFF, names=("'predictions'", str(tmp_path), "a folder"))


def test_eval_predictions_file_missing(capsys, dataset, tmp_path):
    fails(capsys, "eval", f"dataset={dataset}", f"predictions={tmp_path / 'p.jsonl'}",
          f"output={tmp_path / 'o'}", OFF, names=("'predictions'", "p.jsonl", "does not exist"))


def test_eval_model_with_junk_weights(capsys, dataset, ckpt_dir, tmp_path):
    (ckpt_dir / "model.safetensors").write_bytes(b"\x00" * 3)
    fails(capsys, "eval", f"dataset={dataset}", f"model={ckpt_dir}", f"output={tmp_path / 'o'}",
          OFF, names=("'model'", "model.safetensors"))


def test_eval_model_of_an_unsupported_type(capsys, dataset, ckpt_dir, tmp_path):
    (ckpt_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (ckpt_dir / "model.safetensors").write_bytes(_safetensors())
    fails(capsys, "eval", f"dataset={dataset}", f"model={ckpt_dir}", f"output={tmp_path / 'o'}",
          OFF, names=("'model'", "'llama'", "not supported"))


def test_eval_output_is_a_file(capsys, dataset, a_file):
    fails(capsys, "eval", f"dataset={dataset}", "model=baseline:prior", f"output={a_file}", OFF,
          names=("'output'", str(a_file)))
    assert a_file.read_text() == "not a folder\n"


# --------------------------------------------------------------------------------- restore

def test_restore_input_does_not_exist(capsys, tmp_path):
    fails(capsys, "restore", f"input={tmp_path / 'missing.png'}", "model=baseline:prior",
          f"calibration={tmp_path}", f"output={tmp_path / 'o'}", OFF,
          names=("'input'", "missing.png", "does not exist"))


def test_restore_split_of_a_file_not_a_dataset(capsys, a_file, tmp_path):
    fails(capsys, "restore", f"input={a_file}", "split=test", f"output={tmp_path / 'o'}", OFF,
          names=("'input'", str(a_file), "is a file"))


def test_restore_annotation_is_a_folder(capsys, tmp_path):
    (tmp_path / "im.png").write_bytes(_png())
    fails(capsys, "restore", f"input={tmp_path / 'im.png'}", f"annotation={tmp_path}",
          f"output={tmp_path / 'o'}", OFF, names=("'annotation'", str(tmp_path), "a folder"))


def test_restore_output_is_a_file(capsys, tmp_path, a_file):
    (tmp_path / "im.png").write_bytes(_png())
    (tmp_path / "a.json").write_text(json.dumps({"degradations": []}))
    fails(capsys, "restore", f"input={tmp_path / 'im.png'}", f"annotation={tmp_path / 'a.json'}",
          f"output={a_file}", OFF, names=("'output'", str(a_file)))


def test_restore_ddnm_model_is_a_file(capsys, dataset, a_file, tmp_path):
    fails(capsys, "restore", f"input={dataset}", "split=test", "restore.backend=ddnm",
          f"restore.model={a_file}", f"output={tmp_path / 'o'}", OFF,
          names=("'restore.model'", str(a_file), "is a file"))


def test_restore_vlm_model_does_not_exist(capsys, dataset, tmp_path):
    fails(capsys, "restore", f"input={dataset}", "split=test", f"model={tmp_path / 'no_ckpt'}",
          f"output={tmp_path / 'o'}", OFF, names=("'model'", "no_ckpt", "does not exist"))


# --------------------------------------------------------------------------------- compare

def test_compare_unreachable_mlflow_is_one_line_within_seconds(capsys, tmp_path):
    url = dead_url()
    line = fails(capsys, "compare", f"tracking.uri={url}", f"output={tmp_path / 'o'}",
                 names=(url, "unreachable"), within_s=10)
    assert "tracking.enabled=false" not in line  # compare needs the server: no such advice


def test_compare_output_is_a_file(capsys, a_file, tmp_path):
    fails(capsys, "compare", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}", f"output={a_file}",
          names=("'output'", str(a_file)))


def test_compare_sqlite_store_in_a_missing_folder(capsys, tmp_path):
    uri = f"sqlite:///{tmp_path / 'no' / 'such' / 'mlflow.db'}"
    fails(capsys, "compare", f"tracking.uri={uri}", f"output={tmp_path / 'o'}",
          names=(uri, "does not exist"))


# -------------------------------------------------------------------------------- pipeline

def test_pipeline_workdir_is_a_file(capsys, a_file):
    fails(capsys, "pipeline", f"workdir={a_file}", OFF, names=("'workdir'", str(a_file)))


def test_pipeline_without_generate_needs_the_data(capsys, tmp_path):
    fails(capsys, "pipeline", f"workdir={tmp_path / 'w'}", "stages=[sft]", OFF,
          names=("'data'", str(tmp_path / "w" / "data"), "add 'generate'"))


def test_pipeline_generate_source_missing(capsys, tmp_path):
    fails(capsys, "pipeline", f"workdir={tmp_path / 'w'}",
          f"generate.sources=[{tmp_path / 'photos'}]", OFF, names=(str(tmp_path / "photos"),))


def test_pipeline_unreachable_mlflow(capsys, tmp_path):
    url = dead_url()
    fails(capsys, "pipeline", f"workdir={tmp_path / 'w'}", f"tracking.uri={url}",
          names=(url, "unreachable"), within_s=10)


def test_pipeline_eval_of_a_model_never_trained(capsys, dataset, tmp_path):
    w = tmp_path / "w"
    w.mkdir()
    os.symlink(dataset, w / "data")
    # rl is not among the stages, so eval uses sft/final, which no stage of this run makes
    fails(capsys, "pipeline", f"workdir={w}", "stages=[eval]", "baselines=[]", OFF,
          names=("eval: the sft stage's model", str(w / "sft" / "final"), "add 'sft'"))


def test_pipeline_stage_user_error_is_exit_2_with_the_stage(capsys, dataset, ckpt_dir, tmp_path,
                                                            ray_never_starts):
    """A stage's own user error (here eval's output is a file) stops the pipeline with exit 2
    and the stage's name; the pipeline's Ray session (recorded here, not started) ends."""
    w = tmp_path / "w"
    w.mkdir()
    os.symlink(dataset, w / "data")
    (w / "sft").mkdir()
    (ckpt_dir / "model.safetensors").write_bytes(_safetensors())
    os.symlink(ckpt_dir, w / "sft" / "final")
    (w / "eval").write_text("a file where eval's outputs go")
    line = fails(capsys, "pipeline", f"workdir={w}", "stages=[eval]", "baselines=[]", OFF,
                 names=("stage 'eval-model'", "'output'", str(w / "eval" / "model")))
    assert "later stages not run" in line
    assert len(ray_never_starts) == 1
    ray_never_starts.clear()


# -------------------------------------------------------------------------------- generate

def test_generate_source_folder_missing(capsys, tmp_path):
    fails(capsys, "generate", f"sources=[{tmp_path / 'photos'}]", f"output={tmp_path / 'o'}", OFF,
          names=(str(tmp_path / "photos"),))
    assert not (tmp_path / "o").exists()


def test_generate_output_is_a_file(capsys, a_file):
    fails(capsys, "generate", "sources=[builtin]", f"output={a_file}", OFF,
          names=("'output'", str(a_file)))
    assert a_file.read_text() == "not a folder\n"


def test_generate_keeps_a_finished_dataset(capsys, dataset, tmp_path):
    out = tmp_path / "done"
    out.mkdir()
    (out / "dataset_card.json").write_text(json.dumps({"fingerprint": "x"}))
    (out / "part-00000.parquet").write_bytes((dataset / "part-00000.parquet").read_bytes())
    fails(capsys, "generate", "sources=[builtin]", f"output={out}", OFF,
          names=(str(out), "finished dataset", "overwrite=true"))
    assert (out / "part-00000.parquet").stat().st_size > 0


def test_generate_unreachable_mlflow(capsys, tmp_path):
    url = dead_url()
    fails(capsys, "generate", "sources=[builtin]", f"output={tmp_path / 'o'}",
          f"tracking.uri={url}", names=(url, "unreachable"), within_s=10)


# -------------------------------------------------------------------------------------- S3

@pytest.fixture
def s3(s3_env, monkeypatch):
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    yield s3_env
    s3fs.S3FileSystem.clear_instance_cache()


def test_s3_generate_source_bucket_missing(capsys, s3, tmp_path):
    fails(capsys, "generate", "sources=[s3://no-such-bucket-dt/photos]",
          f"output={tmp_path / 'o'}", OFF,
          names=("'sources'", "no-such-bucket-dt", "does not exist"))


def test_s3_generate_output_bucket_missing(capsys, s3):
    fails(capsys, "generate", "sources=[builtin]", "output=s3://no-such-bucket-dt/data", OFF,
          names=("'output'", "no-such-bucket-dt", "does not exist"))


def test_s3_sft_dataset_prefix_empty(capsys, s3, tmp_path):
    uri = f"s3://{s3['bucket']}/nothing/here"
    fails(capsys, "sft", f"dataset={uri}", f"output={tmp_path / 'o'}", OFF,
          names=("'dataset'", uri, "does not exist"))


def test_s3_eval_without_credentials(capsys, s3, monkeypatch, tmp_path):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    fails(capsys, "eval", f"dataset=s3://{s3['bucket']}/data", "model=baseline:prior",
          f"output={tmp_path / 'o'}", OFF, names=("'dataset'", "no S3 credentials"))


def test_s3_endpoint_unreachable(capsys, s3, monkeypatch, tmp_path):
    url = dead_url()
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    fails(capsys, "rl", f"dataset=s3://{s3['bucket']}/data", f"output={tmp_path / 'o'}", OFF,
          names=("'dataset'", "endpoint unreachable"), within_s=20)


# ---------------------------------------------------------------------------------- submit

def test_submit_unknown_flag(capsys):
    fails(capsys, "submit", "generate", "--adress", "x", names=("'--adress'", "--address"))


def test_submit_flag_without_its_value(capsys):
    fails(capsys, "submit", "--wait", names=("--wait needs a value",))


def test_submit_to_an_address_nobody_listens_on(capsys):
    url = dead_url()
    line = fails(capsys, "submit", "--list", "--address", url, code=4, names=())
    assert "Connection" in line or "connect" in line.lower()


def test_submit_checks_the_cluster_finds_dutrain(capsys, monkeypatch, tmp_path):
    """A head started with `.venv/bin/ray start` from a shell without the venv on PATH: the
    probe job fails, and the real job is never uploaded."""
    import dutrain.submit as sub

    class Status(str):
        def is_terminal(self) -> bool:
            return self in ("SUCCEEDED", "FAILED", "STOPPED")

    class FakeClient:
        submitted: list = []

        def submit_job(self, entrypoint, **kw):
            self.submitted.append(entrypoint)
            return f"job{len(self.submitted)}"

        def get_job_status(self, job_id):
            return Status("FAILED")

        def get_job_logs(self, job_id):
            return "PATH=/usr/bin:/bin\n"

        def delete_job(self, job_id):
            return True

    monkeypatch.setattr(sub, "connect", lambda address: FakeClient())
    fails(capsys, "submit", "generate", "--address", "http://127.0.0.1:1", "samples=4",
          names=("`dutrain` is not on the PATH", "PATH=/usr/bin:/bin", "--no-check"))
    assert FakeClient.submitted == [sub.PROBE]  # only the probe, no upload


# ------------------------------------------------------------------------------- interrupts

def _marked(marker: str) -> list[int]:
    """Pids of live processes whose environment holds `marker` (started by the run)."""
    pids = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{e}/environ").read_bytes():
                    st = Path(f"/proc/{e}/stat").read_text().rsplit(")", 1)[1].split()
                    if st[0] != "Z":
                        pids.append(int(e))
            except OSError:
                continue
    return pids


def _ray_children(marker: str, me: int) -> list[int]:
    return [p for p in _marked(marker) if p != me]


def _sigint_default() -> None:
    """A child that Ctrl-C can reach even when the suite runs in the background (`cmd &` in a
    non-interactive shell starts it with SIGINT ignored, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("delay_s", [0.0, 1.5])
def test_ctrl_c_during_ray_start_up_leaves_no_ray_processes(tmp_path, delay_s):
    """SIGINT while the local Ray cluster starts (as soon as its first process is up, and a
    moment later): exit 130, one line, and none of Ray's helper processes left running."""
    marker = f"DUTRAIN_TEST_MARK={uuid.uuid4().hex}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1], "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([str(BIN / "dutrain"), "generate", "sources=[builtin]", "samples=4",
                             f"output={tmp_path / 'o'}", OFF, "progress=false", "ray.num_cpus=1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_sigint_default)
    try:
        deadline = time.monotonic() + 90
        while not _ray_children(marker, proc.pid) and proc.poll() is None:
            assert time.monotonic() < deadline, "Ray did not start"
            time.sleep(0.05)
        time.sleep(delay_s)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "dutrain generate: interrupted" in err
    deadline = time.monotonic() + 20
    while _marked(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _marked(marker)
    for pid in left:  # do not leak them into the rest of the session, but fail
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not left, [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in left
                      if Path(f"/proc/{p}").exists()]


def test_ctrl_c_before_ray_exits_130(tmp_path):
    """SIGINT while the driver still lists its sources (before Ray): exit 130, one line."""
    code = ("import os, signal, sys, time\n"
            "import dutrain.data.generate as g\n"
            "def slow(*a, **k):\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(30)\n"
            "g.list_sources = slow\n"
            "from dutrain.cli import main\n"
            f"sys.exit(main(['generate', 'output={tmp_path / 'o'}', '{OFF}']))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, preexec_fn=_sigint_default)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "dutrain generate: interrupted" in proc.stderr
