"""The tiny VLM: deterministic build, transformers and vLLM (CPU) load it and agree greedily,
and the engine's weight update reaches the model vLLM serves."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from dutrain.models import encode_prompts, load_model, load_processor, resolve_model, tiny_model
from dutrain.models.loading import CheckpointError
from dutrain.models.tiny import TinySpec
from dutrain.runtime.vllm_env import VLLM_ENV


def test_build_is_deterministic_and_cached(tmp_path):
    spec = TinySpec(corpus_samples=300)
    a = tiny_model(spec, tmp_path / "a")
    b = tiny_model(spec, tmp_path / "b")
    assert a.name == b.name  # same hash
    for f in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    assert tiny_model(spec, tmp_path / "a") == a
    assert (a / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt
    assert tiny_model(TinySpec(corpus_samples=300, seed=1), tmp_path / "a") != a


def test_resolve_model_refuses_bad_references(tmp_path):
    with pytest.raises(CheckpointError, match="neither 'tiny'"):
        resolve_model("./nowhere/at/all")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="not supported; allowed: qwen2_vl, qwen2_5_vl"):
        resolve_model(str(tmp_path))


def _perturbed_copy(src: Path, dst: Path, seed: int) -> Path:
    """The tiny model with larger random weights, so greedy outputs vary from token to token."""
    model = load_model(src)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    model.save_pretrained(dst)
    load_processor(src).save_pretrained(dst)
    return dst


def _hf_greedy(model_dir: Path, images: list[np.ndarray],
               n: int) -> list[tuple[list[int], list[float]]]:
    proc, model = load_processor(model_dir), load_model(model_dir)
    out = []
    for im in images:
        p = encode_prompts(proc, [im])
        g = model.generate(**p, max_new_tokens=n, do_sample=False, output_scores=True,
                           return_dict_in_generate=True)
        ids = g.sequences[0, p["input_ids"].shape[1]:].tolist()
        lps = [float(torch.log_softmax(s[0].float(), -1)[t]) for s, t in zip(g.scores, ids)]
        out.append((ids, lps))
    return out


_ENGINE_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    from dutrain.models.engine import VLLMEngine
    from dutrain.schema import parse_answer

    if __name__ == "__main__":
        base, perturbed, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
        imgs = [np.random.default_rng(s).integers(0, 256, (112, 112, 3), dtype=np.uint8)
                for s in range(3)]
        res = {}
        eng = VLLMEngine(perturbed, dtype="float32", max_model_len=512)
        o = eng.generate(imgs, max_tokens=n, logprobs=True)
        res["direct"] = [(c[0].token_ids, c[0].logprobs) for c in o]
        s = eng.generate(imgs[:1], n=3, temperature=1.0, max_tokens=200, structured=True, seed=0)
        res["structured_errors"] = [parse_answer(c.text).errors for c in s[0]]
        eng.close()
        # start from the base weights, then push the perturbed ones into the running engine
        eng = VLLMEngine(base, dtype="float32", max_model_len=512)
        before = eng.generate(imgs, max_tokens=n)
        res["before_update"] = [c[0].token_ids for c in before]
        sums0 = eng.param_checksums()
        eng.update_weights(perturbed)
        res["checksum_changed"] = sums0 != eng.param_checksums()
        o = eng.generate(imgs, max_tokens=n, logprobs=True)
        res["updated"] = [(c[0].token_ids, c[0].logprobs) for c in o]
        json.dump(res, open(out, "w"))
''')


def test_transformers_and_vllm_agree_greedy_and_after_weight_update(tmp_path):
    base = tiny_model()
    perturbed = _perturbed_copy(base, tmp_path / "perturbed", seed=3)
    n = 24
    imgs = [np.random.default_rng(s).integers(0, 256, (112, 112, 3), dtype=np.uint8)
            for s in range(3)]
    hf = _hf_greedy(perturbed, imgs, n)
    hf_base = _hf_greedy(base, imgs, n)
    assert len({tuple(t) for ids, _ in hf for t in [ids]}) > 1 or len(set(hf[0][0])) > 3, \
        "perturbed model should not repeat one token"
    script = tmp_path / "engine_check.py"
    script.write_text(_ENGINE_SCRIPT)
    out = tmp_path / "out.json"
    env = {**__import__("os").environ, **VLLM_ENV}
    proc = subprocess.run([sys.executable, str(script), str(base), str(perturbed), str(n),
                           str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    for key in ("direct", "updated"):
        for (v_ids, v_lp), (h_ids, h_lp) in zip(res[key], hf):
            assert v_ids == h_ids, key
            np.testing.assert_allclose(v_lp, h_lp, atol=2e-3)
    assert res["before_update"] == [ids for ids, _ in hf_base]
    assert res["before_update"] != res["updated"]
    assert res["checksum_changed"]
    assert res["structured_errors"] == [[], [], []]
