"""`dutrain submit`, the parts that need no cluster: argv, auth lookup, job spec, secret checks."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from dutrain.cli import main
from dutrain.config import ConfigError, RayConfig, TrackingConfig, configclass, load_config, option
from dutrain.config.submit import DEFAULT_EXCLUDES, SubmitConfig
from dutrain.submit import (
    CONFIG_DIR,
    auth_token,
    entrypoint,
    entrypoint_resources,
    job_env,
    job_overrides,
    parse_argv,
    resolve_address,
    stage_working_dir,
)


def test_parse_argv_splits_submit_flags_from_the_verb_and_its_overrides():
    req = parse_argv(["generate", "--address", "http://h:8265", "samples=10", "-f",
                      "--config=cfg.yaml", "--env", "A", "--env=B=2", "seed=3", "--num-cpus", "2"])
    assert (req.action, req.verb, req.config_file) == ("submit", "generate", "cfg.yaml")
    assert req.overrides == ["samples=10", "seed=3"]
    assert req.settings == {"address": "http://h:8265", "follow": True, "env": ["A", "B=2"],
                            "entrypoint_num_cpus": 2}


@pytest.mark.parametrize("argv, action, job_id", [
    (["--status", "raysubmit_1"], "status", "raysubmit_1"),
    (["--logs=raysubmit_2", "--follow"], "logs", "raysubmit_2"),
    (["--stop", "x", "--wait", "5"], "stop", "x"),
    (["--list"], "list", None),
    (["generate", "--help"], "help", None),
])
def test_parse_argv_actions(argv, action, job_id):
    req = parse_argv(argv)
    assert (req.action, req.job_id) == (action, job_id)


def test_parse_argv_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown option '--adress'"):
        parse_argv(["generate", "--adress", "x"])
    with pytest.raises(ConfigError, match="missing VERB"):
        parse_argv(["--follow"])
    with pytest.raises(ConfigError, match="--status needs a value"):
        parse_argv(["--status"])
    with pytest.raises(ConfigError, match="--stop takes no verb"):
        parse_argv(["--stop", "id", "generate"])


def test_exclude_flag_adds_to_the_defaults():
    cfg = load_config(SubmitConfig, overrides=parse_argv(["v", "--exclude", "data"]).settings)
    assert list(cfg.excludes) == [*DEFAULT_EXCLUDES, "data"]


def test_bad_submit_values_are_usage_errors(capsys):
    assert main(["submit", "v", "--num-gpus", "-1"]) == 2
    assert ("bad value for 'entrypoint_num_gpus' (--num-gpus): -1.0 (allowed: a number or null "
            ">= 0)") in capsys.readouterr().err
    assert main(["submit", "v", "--address", "nowhere"]) == 2
    assert "bad value for 'address' (--address): 'nowhere'" in capsys.readouterr().err


def test_unknown_verb_is_refused_before_any_connection(capsys):
    # the address is unroutable: reaching it would hang or fail with exit code 4, not 2
    assert main(["submit", "no-such-verb", "--address", "http://192.0.2.1:8265"]) == 2
    assert "cannot submit 'no-such-verb'" in capsys.readouterr().err


def test_resolve_address_order():
    env = {"RAY_ADDRESS": "http://b:1", "RAY_API_SERVER_ADDRESS": "http://a:1"}
    assert resolve_address("http://x:1", env) == "http://x:1"
    assert resolve_address(None, env) == "http://a:1"
    assert resolve_address(None, {"RAY_ADDRESS": "http://b:1"}) == "http://b:1"
    assert resolve_address(None, {}) == "http://127.0.0.1:8265"


def test_auth_token_lookup_order(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home-file\n")
    other = tmp_path / "tok"
    other.write_text("  from-path-var ")
    assert auth_token({"RAY_AUTH_TOKEN": "from-env"}, home) == "from-env"
    assert auth_token({"RAY_AUTH_TOKEN_PATH": str(other)}, home) == "from-path-var"
    assert auth_token({}, home) == "from-home-file"
    assert auth_token({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "x"}, home) is None
    assert auth_token({}, tmp_path / "empty-home") is None
    with pytest.raises(ConfigError, match="RAY_AUTH_MODE=token but no token found"):
        auth_token({"RAY_AUTH_MODE": "token"}, tmp_path / "empty-home")
    with pytest.raises(ConfigError, match="RAY_AUTH_TOKEN_PATH names .* not a file"):
        auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, home)


def test_job_env_forwards_names_and_refuses_secrets():
    env = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
           "MY_API_TOKEN": "abcdefgh"}
    assert job_env(["MLFLOW_TRACKING_URI", "X=1"], env) == {
        "PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": "http://mlflow:5000", "X": "1"}
    for item in ["AWS_SECRET_ACCESS_KEY", "MY_API_TOKEN", "DB_PASSWORD=x",
                 "URI=https://user:pw@host/x"]:
        with pytest.raises(ConfigError, match="refusing to put a secret"):
            job_env([item], env)
    with pytest.raises(ConfigError, match="not set here"):
        job_env(["NOT_SET_ANYWHERE"], env)
    with pytest.raises(ConfigError, match="expected NAME or NAME=VALUE"):
        job_env(["1BAD"], env)


def test_entrypoint_resources_defaults_and_overrides():
    base = load_config(SubmitConfig)
    assert entrypoint_resources("generate", base) == {"entrypoint_num_cpus": 1.0}
    assert entrypoint_resources("sft", base) == {}
    gpu = load_config(SubmitConfig, overrides={"entrypoint_num_gpus": 1, "entrypoint_num_cpus": 0})
    assert entrypoint_resources("generate", gpu) == {"entrypoint_num_gpus": 1.0}


def test_entrypoint_is_a_quoted_dutrain_command():
    cmd = entrypoint("generate", f"{CONFIG_DIR}/my cfg.yaml", ["sources=[builtin, /d]"])
    assert shlex.split(cmd) == ["dutrain", "generate", "--config", f"{CONFIG_DIR}/my cfg.yaml",
                                "sources=[builtin, /d]"]


@configclass
class _VerbConfig:
    output: str = option("runs/out", "where")
    ray: RayConfig = option(default_factory=RayConfig)
    tracking: TrackingConfig = option(default_factory=TrackingConfig)


def test_job_overrides_join_the_cluster_and_warn_about_local_outputs():
    overrides, notes = job_overrides(load_config(_VerbConfig), ["output=runs/out"])
    assert overrides == ["output=runs/out", "ray.address=auto"]
    assert any("'output' is the relative path 'runs/out'" in n for n in notes)
    assert any("tracking.uri is not set" in n for n in notes)
    cfg = load_config(_VerbConfig, overrides=["output=s3://b/x", "ray.address=auto",
                                              "tracking.uri=http://m:5000"])
    assert job_overrides(cfg, []) == ([], [])


def test_stage_working_dir_ships_project_files_and_the_config(tmp_path):
    src = tmp_path / "proj"
    for rel in ["dutrain/a.py", "workflows/c.yaml", ".venv/bin/python", "runs/x/part.parquet",
                "dutrain/__pycache__/a.pyc", "mlflow.db", "data/big.bin"]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    cfg_file = tmp_path / "elsewhere.yaml"
    cfg_file.write_text("samples: 3\n")
    dest = tmp_path / "stage"
    n, size, shipped = stage_working_dir(src, cfg_file, dest, [*DEFAULT_EXCLUDES, "data"])
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == ["_submit/elsewhere.yaml", "dutrain/a.py", "workflows/c.yaml"]
    assert (n, shipped) == (3, "_submit/elsewhere.yaml")
    assert size == sum((dest / f).stat().st_size for f in files)


def test_stage_working_dir_follows_gitignore_in_a_checkout(tmp_path):
    src = tmp_path / "repo"
    src.mkdir()
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    (src / ".gitignore").write_text("scratch/\n")
    for rel in ["keep.py", "scratch/huge.bin"]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    n, _, shipped = stage_working_dir(src, None, tmp_path / "stage", DEFAULT_EXCLUDES)
    assert (n, shipped) == (2, None)
    assert not (tmp_path / "stage" / "scratch").exists()
    assert (tmp_path / "stage" / "keep.py").read_text() == "keep.py"


def test_default_working_dir_is_this_checkout():
    from dutrain.submit import default_working_dir
    root = default_working_dir()
    assert root is not None and (root / "dutrain" / "submit.py").is_file()
    assert Path(__file__).resolve().is_relative_to(root)
