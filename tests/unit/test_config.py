"""Config machinery: layering, validation messages (word for word), freezing, redaction, YAMLs."""

from pathlib import Path

import pytest

from dutrain.config import VERBS, ConfigError, TrackingConfig, load_config, redacted, replace, scrub
from dutrain.config.core import FrozenConfigError, configclass, option

ROOT = Path(__file__).resolve().parents[2]


@configclass
class Inner:
    size: int = option(64, "crop size", min=16)


@configclass
class DemoConfig:
    samples: int = option(100, "rows", min=1)
    mode: str = option("fast", "mode", choices=["fast", "exact"])
    sources: list[str] = option(default_factory=lambda: ["builtin"], doc="sources")
    inner: Inner = option(default_factory=Inner)
    tracking: TrackingConfig = option(default_factory=TrackingConfig)


def test_layering_defaults_file_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("samples: 7\ninner:\n  size: 32\n")
    cfg = load_config(DemoConfig, f, ["inner.size=48", "sources=[a, s3://b/c]"], verb="demo")
    assert (cfg.samples, cfg.inner.size, cfg.sources, cfg.mode) == (
        7, 48, ("a", "s3://b/c"), "fast")


def test_unknown_key_message_word_for_word():
    with pytest.raises(ConfigError) as e:
        load_config(DemoConfig, None, ["sampels=3"], verb="demo")
    assert str(e.value) == ("unknown key 'sampels' for 'demo' (did you mean 'samples'?); "
                            "allowed keys: samples, mode, sources, inner.size, tracking.uri, "
                            "tracking.experiment, tracking.run_name, tracking.enabled")
    with pytest.raises(ConfigError, match=r"unknown key 'inner.sise' for 'demo' "
                                          r"\(did you mean 'inner.size'\?\)"):
        load_config(DemoConfig, None, ["inner.sise=3"], verb="demo")


def test_bad_value_messages_word_for_word():
    with pytest.raises(ConfigError) as e:
        load_config(DemoConfig, None, ["samples=abc"], verb="demo")
    assert str(e.value) == "bad value for 'samples': 'abc' (allowed: an integer >= 1)"
    with pytest.raises(ConfigError) as e:
        load_config(DemoConfig, None, ["mode=slow"], verb="demo")
    assert str(e.value) == "bad value for 'mode': 'slow' (allowed: one of 'fast', 'exact')"
    with pytest.raises(ConfigError) as e:
        load_config(DemoConfig, None, ["inner.size=8"], verb="demo")
    assert str(e.value) == "bad value for 'inner.size': 8 (allowed: an integer >= 16)"


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="config file '.*nope.yaml' does not exist"):
        load_config(DemoConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(DemoConfig, bad)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(DemoConfig, None, ["samples"])


def test_frozen_and_replace():
    cfg = load_config(DemoConfig)
    with pytest.raises(FrozenConfigError):
        cfg.samples = 3
    cfg2 = replace(cfg, samples=5, inner__size=20)
    assert (cfg2.samples, cfg2.inner.size, cfg.samples) == (5, 20, 100)
    with pytest.raises(ConfigError):
        replace(cfg, samples=0)


def test_redaction(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sup3r-s3cret-value")
    cfg = load_config(DemoConfig, None, ["tracking.uri=http://bob:hunter22@127.0.0.1:5000",
                                         "sources=[s3://b/sup3r-s3cret-value]"])
    red = redacted(cfg)
    assert red["tracking"]["uri"] == "http://bob:***@127.0.0.1:5000"
    assert red["sources"] == ["s3://b/***"]
    assert "sup3r" not in scrub("key=sup3r-s3cret-value")
    assert redacted({"api_token": "abc", "tokenizer": "bpe", "max_tokens": 3}) == \
        {"api_token": "***", "tokenizer": "bpe", "max_tokens": 3}


def _yaml_configs():
    for f in sorted((ROOT / "workflows" / "configs").glob("*/*.yaml")):
        yield pytest.param(f, id=f"{f.parent.name}/{f.name}")


@pytest.mark.parametrize("path", list(_yaml_configs()))
def test_every_workflow_yaml_loads_and_validates(path):
    verb = path.parent.name
    assert verb in VERBS, f"{path}: folder must be a verb ({', '.join(VERBS)})"
    load_config(VERBS[verb].config_class(), path, verb=verb)


def test_every_verb_has_help():
    from dutrain.cli import _verb_help
    for name, verb in VERBS.items():
        if name != "submit":
            text = _verb_help(name)
            assert "tracking.uri" in text or "keys" in text
