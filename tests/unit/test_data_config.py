"""GenerateConfig: required keys, defaults that run offline, and clear errors."""

from __future__ import annotations

import pytest

from dutrain.config import ConfigError, all_keys, load_config
from dutrain.config.generate import GenerateConfig
from dutrain.data.generate import GEN_KEYS, fingerprint, gen_params


def test_required_keys_exist_and_defaults_are_offline():
    keys = set(all_keys(GenerateConfig))
    assert {"output", "sources", "samples", "image_size", "seed", "ood_fraction",
            "clean_fraction", "workers", "overwrite", "storage.endpoint_url", "ray.address",
            "tracking.uri"} <= keys
    cfg = load_config(GenerateConfig)
    assert cfg.sources == ("builtin",) and cfg.ray.address is None
    assert not cfg.output.startswith("s3")


@pytest.mark.parametrize("override, message", [
    (["val_fraction=0.5", "test_fraction=0.5"], "sum < 1"),
    (["test_fraction=0", "ood_fraction=0.2"], "ood rows come from test-split sources"),
    (["type_probs={blurr: 1}"], "bad key\\(s\\) in 'type_probs'"),
    (["type_probs={jpeg: 0}"], "at least one > 0"),
    (["sources=[]"], "non-empty list"),
    (["sources=[builtin,dead_leaves:0]"], "'dead_leaves:0': the image count must be an integer"),
    (["image_size=4"], "image_size"),
    (["png_level=10"], "png_level"),
    (["workers=0"], "workers"),
    (["sources=[builtin,photos:nope]"], "'sources': unknown photo group 'nope'.*caer"),
])
def test_bad_values_fail_before_work(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(GenerateConfig, overrides=override)


def test_fingerprint_covers_what_decides_the_rows_only():
    base = load_config(GenerateConfig)
    fp = fingerprint(gen_params(base))
    assert fingerprint(gen_params(load_config(GenerateConfig, overrides=["workers=7",
                                                                         "overwrite=true"]))) == fp
    assert fingerprint(gen_params(load_config(GenerateConfig, overrides=["seed=1"]))) != fp
    assert set(GEN_KEYS) < set(all_keys(GenerateConfig))
