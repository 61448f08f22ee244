"""`dutrain pipeline`: every stage's config in one, validated together before any stage starts.

Each stage section is that verb's own config. `stage_configs` names a YAML per stage that is
applied as the base of its section (so the pipeline reuses `workflows/configs/<verb>/demo.yaml`
instead of repeating it); the pipeline file and key=value overrides go on top
(`sft.max_steps=20`). The pipeline then wires outputs to inputs under `workdir`, overriding the
sections' own paths: generate → `storage_root/data`, sft → `storage_root/sft`, offline →
`storage_root/offline` (off unless listed in `stages`; then rl starts from its model), rl →
`storage_root/rl` (storage_root defaults to workdir; s3:// on a cluster), eval →
`workdir/eval/<system>`, restore → `workdir/restore`, compare → `workdir/compare`.
"""

from __future__ import annotations

from typing import Any

from .common import RayConfig, TrackingConfig
from .compare import CompareConfig
from .core import ConfigError, configclass, option, read_yaml
from .eval import EvalConfig
from .generate import GenerateConfig
from .offline import OfflineConfig
from .restore import RestoreConfig
from .rl import RLConfig
from .sft import SFTConfig

PIPELINE_STAGES = ("generate", "sft", "offline", "rl", "eval", "restore", "compare")
#: the stages run when `stages` is not given: offline RL is switched on by listing it
DEFAULT_STAGES = tuple(s for s in PIPELINE_STAGES if s != "offline")


@configclass
class PipelineConfig:
    workdir: str = option("runs/demo", "local folder for reports (eval, restore, compare) and "
                                       "the pipeline's completion markers")
    storage_root: str | None = option(None, "where data and checkpoints go (s3://bucket/prefix on "
                                            "a cluster; default: workdir)")
    stages: list[str] = option(default_factory=lambda: list(DEFAULT_STAGES),
                               doc=f"stages to run, in order (subset of "
                                   f"{', '.join(PIPELINE_STAGES)})")
    force: list[str] = option(default_factory=list,
                              doc="stages to redo even if complete (later stages that depend on "
                                  "them are redone too)")
    stage_configs: dict[str, str] = option(default_factory=dict, doc="stage → YAML file applied as "
                                           "the base of that stage's section")
    baselines: list[str] = option(default_factory=lambda: ["baseline:prior", "baseline:classical"],
                                  doc="baselines evaluated beside the trained model")
    eval_model: str = option("rl", "which checkpoint the eval/restore stages use",
                             choices=("rl", "offline", "sft"))
    generate: GenerateConfig = option(default_factory=GenerateConfig, doc="generate stage")
    sft: SFTConfig = option(default_factory=SFTConfig, doc="sft stage")
    offline: OfflineConfig = option(default_factory=OfflineConfig,
                                    doc="offline stage (DPO on scored samples; off by default)")
    rl: RLConfig = option(default_factory=RLConfig, doc="rl stage")
    eval: EvalConfig = option(default_factory=EvalConfig, doc="eval stage (model and baselines)")
    restore: RestoreConfig = option(default_factory=RestoreConfig, doc="restore stage")
    compare: CompareConfig = option(default_factory=CompareConfig, doc="compare stage")
    tracking: TrackingConfig = option(default_factory=TrackingConfig,
                                      doc="MLflow for the parent run and every stage run")
    ray: RayConfig = option(default_factory=RayConfig, doc="the Ray cluster all stages share")

    @staticmethod
    def expand_layers(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        files: dict[str, str] = {}
        for layer in layers:
            files.update(layer.get("stage_configs") or {})
        # only the listed stages' files are read: a preset may name a file for an optional stage
        # (offline) by a path relative to the repo, which need not exist where the run starts
        listed = next((layer["stages"] for layer in reversed(layers)
                       if isinstance(layer.get("stages"), list)), None)
        base = []
        for stage, path in files.items():
            if stage not in PIPELINE_STAGES:
                raise ConfigError(f"bad key in 'stage_configs': {stage!r} (allowed: "
                                  f"{', '.join(PIPELINE_STAGES)})")
            if listed is None or stage in listed:
                base.append({stage: read_yaml(path)})
        return base + layers

    def validate(self) -> None:
        for key in ("stages", "force"):
            bad = [s for s in getattr(self, key) if s not in PIPELINE_STAGES]
            if bad:
                raise ConfigError(f"bad value for '{key}': {bad} "
                                  f"(allowed: {', '.join(PIPELINE_STAGES)})")
        if "://" in self.workdir:
            raise ConfigError(f"bad value for 'workdir': {self.workdir!r} (allowed: a local path; "
                              f"point stage outputs at s3:// in their own sections instead)")
