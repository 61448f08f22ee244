"""Model evaluation through vLLM's CPU build in Ray actors equals the predictions-file path fed
with the same model's own completions (generated here by a standalone engine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from test_eval_data import write_dataset

from dutrain.cli import main
from dutrain.io.dataset import read_table
from dutrain.models import tiny_model
from dutrain.runtime.vllm_env import VLLM_ENV

# Greedy decoding of the random tiny model loops inside <think>; seeded sampling (one generator per
# request in vLLM, so batching does not matter) under the answer grammar ends in valid answers.
GEN = ["generation.structured=true", "generation.max_tokens=200", "generation.batch_size=16",
       "generation.temperature=1.0", "generation.seed=0"]

_STANDALONE = textwrap.dedent('''
    import json, sys
    import pyarrow.parquet as pq
    from dutrain.io.dataset import decode_png, read_table
    from dutrain.models.engine import VLLMEngine

    if __name__ == "__main__":
        model, root, out = sys.argv[1:4]
        t = read_table(root, ["test", "ood"], ["sample_id", "degraded"])
        ids, pngs = t.column("sample_id").to_pylist(), t.column("degraded").to_pylist()
        eng = VLLMEngine(model, dtype="float32", max_model_len=1024, max_num_seqs=16, seed=0)
        comps = eng.generate([decode_png(p) for p in pngs], temperature=1.0, max_tokens=200,
                             seed=0, structured=True)
        with open(out, "w") as f:
            for i, c in zip(ids, comps):
                f.write(json.dumps({"sample_id": i, "completion": c[0].text}) + "\\n")
''')


def test_vllm_actor_eval_equals_predictions_path(tmp_path, ray_local):
    root = write_dataset(tmp_path / "ds", {"train": 4, "test": 4, "ood": 3}, size=112, seed=2)
    model = tiny_model()
    out_model = tmp_path / "model"
    assert main(["eval", f"dataset={root}", "model=tiny", f"output={out_model}",
                 "tracking.enabled=false", "plots=false", *GEN]) == 0
    script = tmp_path / "standalone.py"
    script.write_text(_STANDALONE)
    preds = tmp_path / "own.jsonl"
    env = {**os.environ, **VLLM_ENV}
    proc = subprocess.run([sys.executable, str(script), str(model), str(root), str(preds)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out_preds = tmp_path / "preds"
    assert main(["eval", f"dataset={root}", f"predictions={preds}", f"output={out_preds}",
                 "tracking.enabled=false", "plots=false"]) == 0
    m_model = json.loads((out_model / "metrics.json").read_text())
    m_preds = json.loads((out_preds / "metrics.json").read_text())
    timing = {k for k in m_model if k.startswith("eval/")}
    assert {k: v for k, v in m_model.items() if k not in timing} == \
        {k: v for k, v in m_preds.items() if not k.startswith("predictions/")}
    # the grammar makes completions valid answers, so the metrics are not trivially zero
    assert m_model["test/format_valid"] + m_model["ood/format_valid"] > 1.0
    assert m_model["eval/samples_per_s"] > 0 and m_model["eval/workers"] == 1
    own = [json.loads(x) for x in preds.read_text().splitlines()]
    mine = {json.loads(x)["sample_id"]: json.loads(x)["completion"]
            for x in (out_model / "completions.jsonl").read_text().splitlines()}
    assert {o["sample_id"]: o["completion"] for o in own} == mine
    assert len(mine) == read_table(str(root), ["test", "ood"], ["sample_id"]).num_rows
