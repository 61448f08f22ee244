"""`dutrain offline`'s config: K >= 2, sampling temperature > 0, --help shows the section's own
defaults (sampling at temperature 1 under the grammar, not eval's greedy ones)."""

from __future__ import annotations

import pytest

from dutrain.config import ConfigError, load_config
from dutrain.config.core import help_rows
from dutrain.config.offline import OfflineConfig


def test_defaults_sample_and_bad_values_are_config_errors():
    cfg = load_config(OfflineConfig)
    assert cfg.samples_per_prompt >= 2 and cfg.generation.temperature > 0
    with pytest.raises(ConfigError, match="samples_per_prompt"):
        load_config(OfflineConfig, overrides=["samples_per_prompt=1"])
    with pytest.raises(ConfigError, match="generation.temperature"):
        load_config(OfflineConfig, overrides=["generation.temperature=0"])


def test_help_shows_the_sections_factory_defaults():
    rows = {k: d for k, d, _ in help_rows(OfflineConfig)}
    assert rows["generation.temperature"] == "1.0" and rows["generation.structured"] == "true"


def test_sft_weight_adds_trls_sft_loss_beside_the_sigmoid_one(tmp_path):
    from dutrain.offline.dpo import dpo_args

    plain = dpo_args(load_config(OfflineConfig), str(tmp_path))
    assert list(plain.loss_type) == ["sigmoid"]
    rpo = dpo_args(load_config(OfflineConfig, overrides=["sft_weight=0.5"]), str(tmp_path))
    assert list(rpo.loss_type) == ["sigmoid", "sft"] and list(rpo.loss_weights) == [1.0, 0.5]
    with pytest.raises(ConfigError, match="sft_weight"):
        load_config(OfflineConfig, overrides=["sft_weight=-1"])
