"""How separable are the degradation types on held-out photos? Reference classifiers trained on
a dataset's train split and scored on its test split, next to linear probes of the *untrained*
tiny vision tower for each `patch_init`. Prints JSON.

    .venv/bin/python tests/benchmarks/bench_type_ceiling.py --dataset runs/demo/data [--test 800]

- `features_gbm`: gradient boosting on hand-made features (the reasoning cues of
  `dutrain.degrade.cues`, the log power spectrum in 12 radial × 4 orientation bins, 8×8
  blockiness, noise by brightness, intensity percentiles): a strong classical reference;
  `photos_curve` retrains it on the rows of n of the train+val photos (`--curve`, default
  3, 6, 12, 24 and all; `--draws` random draws each; procedural sources never count as photos
  and are left out of the curve);
- `dct16_linear`: logistic regression on the mean |DCT| of all 256 luma coefficients of the
  16×16 patches (the information a patch-16 tower can expose by rectifying coefficients),
  raw and log;
- `tower_probe/<init>`: logistic regression on the mean and std over image tokens of the tiny
  model's vision output (what the language model receives) before any training; sizes from
  the demo sft config (`--sft-config`);
- with `--dead-leaves N`: the `dead_leaves:N` generate source (N procedural images, occluding
  disks with power-law radii, `dutrain/degrade/procedural.py`) through `dutrain generate` with the
  demo generate config, and `features_gbm` is retrained on the photos plus those rows
  (`dead_leaves_gbm`) and on those rows alone (`dead_leaves_only_gbm`) — is a procedural source
  a lever for more distinct training content?
One degradation or none per sample is assumed (the demo setting); the type of a chain is its
first stage. Accuracies are exact-type accuracy; `recall` is per type.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from dutrain.degrade.cues import measure_cues
from dutrain.evaluate.metrics import source_of
from dutrain.io.dataset import decode_png, read_table
from dutrain.schema import CLEAN, TYPES, types_of

LABELS = (CLEAN, *TYPES)


def load(root: str, split: str | None,
         limit: int | None) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Degraded images, type labels and photo ids of one split (all splits if None)."""
    t = read_table(root, [split] if split else None, ["sample_id", "degraded", "annotation"],
                   limit=limit)
    images = [decode_png(b) for b in t.column("degraded").to_pylist()]
    labels = [LABELS.index((types_of(json.loads(a)) or [CLEAN])[0])
              for a in t.column("annotation").to_pylist()]
    photos = [source_of(s) for s in t.column("sample_id").to_pylist()]
    return images, np.array(labels), photos


def hand_features(rgb: np.ndarray) -> list[float]:
    g = rgb.astype(np.float64).mean(2) / 255
    h, w = g.shape
    yy, xx = np.mgrid[0:h, 0:w]
    yy, xx = yy - h // 2, xx - w // 2
    radius = np.sqrt(yy ** 2 + xx ** 2) / (min(h, w) / 2)
    rbin = np.minimum((radius * 12).astype(int), 11)
    abin = ((np.degrees(np.arctan2(yy, xx)) % 180 + 22.5) // 45).astype(int) % 4
    power = np.abs(np.fft.fftshift(np.fft.fft2((g - g.mean()) * np.outer(np.hanning(h),
                                                                         np.hanning(w))))) ** 2
    spectrum = [np.log(power[(rbin == r) & (abin == a)].mean() + 1e-12)
                for r in range(12) for a in range(4)]
    dh, dv = np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0))
    block = [dh[:, 7::8].mean() / (dh.mean() + 1e-9), dv[7::8].mean() / (dv.mean() + 1e-9)]
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    dark = g[1:-1, 1:-1] < np.median(g)
    n_dark = np.median(np.abs(lap[dark])) if dark.any() else 0.0
    n_bright = np.median(np.abs(lap[~dark]))
    rows = g.mean(1)
    chroma = np.abs(rgb[..., 0] / 255 - rgb[..., 1] / 255).mean()
    return (spectrum + list(measure_cues(rgb).values()) + block
            + [n_dark, n_bright, np.log(n_bright + 1e-6) - np.log(n_dark + 1e-6),
               rows[: h // 4].mean() - rows[-h // 4:].mean(), g.std(), chroma]
            + list(np.percentile(g, [1, 5, 25, 50, 75, 95, 99])))


def dct16_features(rgb: np.ndarray, patch: int = 16) -> np.ndarray:
    from scipy.fft import dctn
    g = rgb.astype(np.float64).mean(2) / 255
    h, w = (s - s % patch for s in g.shape)
    p = g[:h, :w].reshape(h // patch, patch, w // patch, patch).transpose(0, 2, 1, 3)
    c = np.abs(dctn(p.reshape(-1, patch, patch), axes=(1, 2), norm="ortho"))
    return np.concatenate([c.mean(0).ravel(), [g.mean(), g.std()]])


def score(pred: np.ndarray, y: np.ndarray) -> dict:
    return {"accuracy": round(float((pred == y).mean()), 3),
            "recall": {LABELS[k]: round(float((pred[y == k] == k).mean()), 2)
                       for k in range(len(LABELS)) if (y == k).any()}}


def linear(train: np.ndarray, ytr: np.ndarray, test: np.ndarray, yte: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    sc = StandardScaler().fit(train)
    clf = LogisticRegression(max_iter=3000).fit(sc.transform(train), ytr)
    return score(clf.predict(sc.transform(test)), yte)


def gbm(train: np.ndarray, ytr: np.ndarray, test: np.ndarray, yte: np.ndarray) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier
    return score(HistGradientBoostingClassifier(max_iter=200, random_state=0)
                 .fit(train, ytr).predict(test), yte)


def tower_features(sft_config: str, init: str, images: list[np.ndarray]) -> np.ndarray:
    import dataclasses

    import torch
    from PIL import Image
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from dutrain.config import load_config
    from dutrain.config.sft import SFTConfig
    from dutrain.models.tiny import tiny_model
    spec = load_config(SFTConfig, sft_config).tiny.spec()
    path = tiny_model(dataclasses.replace(spec, patch_init=init))
    model = Qwen2VLForConditionalGeneration.from_pretrained(path, use_safetensors=True).eval()
    proc = AutoProcessor.from_pretrained(path)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 256):
            chunk = [Image.fromarray(a) for a in images[i:i + 256]]
            enc = proc.image_processor(images=chunk, return_tensors="pt")
            e = model.model.visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"])
            e = getattr(e, "pooler_output", e).reshape(len(chunk), -1,
                                                       model.config.text_config.hidden_size)
            out.append(torch.cat([e.mean(1), e.std(1)], 1).numpy())
    return np.concatenate(out)


def dead_leaves_rows(n_images: int, samples: int,
                     workdir: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Rows of `dutrain generate` on the `dead_leaves:N` source alone (all train split)."""
    from pathlib import Path

    from dutrain.config import load_config
    from dutrain.config.generate import GenerateConfig
    from dutrain.data.generate import generate
    out = Path(workdir) / "data"
    generate(load_config(GenerateConfig, "workflows/configs/generate/demo.yaml", overrides=[
        f"output={out}", f"sources=[dead_leaves:{n_images}]", f"samples={samples}",
        "ood_fraction=0", "progress=false", "tracking.enabled=false"]))
    images, labels, _ = load(str(out), "train", None)
    return images, labels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="runs/demo/data")
    ap.add_argument("--test", type=int, default=800, help="test rows (a spread subset)")
    ap.add_argument("--inits", default="random,dct,dct_block")
    ap.add_argument("--sft-config", default="workflows/configs/sft/demo.yaml",
                    help="the tiny model's sizes are read from this sft config")
    ap.add_argument("--dead-leaves", type=int, default=0,
                    help="also measure N procedural dead-leaves source images (0: skip)")
    ap.add_argument("--dead-leaves-samples", type=int, default=6000)
    ap.add_argument("--curve", default="3,6,12,24,all",
                    help="photo counts of photos_curve ('all': every train+val photo)")
    ap.add_argument("--draws", type=int, default=3, help="random photo draws per curve point")
    ap.add_argument("--curve-only", action="store_true",
                    help="only features_gbm and photos_curve (skip the DCT and tower probes)")
    args = ap.parse_args()
    t0 = time.time()
    tr, ytr, ptr = load(args.dataset, "train", None)
    va, yva, pva = load(args.dataset, "val", None)
    te, yte, _ = load(args.dataset, "test", args.test)
    out: dict = {"dataset": args.dataset, "train_rows": len(tr), "test_rows": len(te),
                 "train_photos": len(set(ptr)),
                 "majority_share": round(float(np.bincount(yte).max() / len(yte)), 3)}
    Htr, Hva, Hte = (np.array([hand_features(a) for a in s]) for s in (tr, va, te))
    out["features_gbm"] = gbm(Htr, ytr, Hte, yte)
    X, y, photos = np.concatenate([Htr, Hva]), np.concatenate([ytr, yva]), np.array(ptr + pva)
    rng, curve = np.random.default_rng(0), {}
    names = sorted(p for p in set(ptr + pva) if not p.startswith("dead_leaves/"))
    for n in sorted({min(len(names), len(names) if c == "all" else int(c))
                     for c in args.curve.split(",")}):
        accs = [gbm(X[m], y[m], Hte, yte)["accuracy"]
                for m in (np.isin(photos, rng.choice(names, n, replace=False))
                          for _ in range(args.draws if n < len(names) else 1))]
        curve[n] = {"mean": round(float(np.mean(accs)), 3), "min": round(float(min(accs)), 3),
                    "max": round(float(max(accs)), 3)}
    out["photos_curve"] = curve
    if args.curve_only:
        out["seconds"] = round(time.time() - t0, 1)
        json.dump(out, sys.stdout, indent=1)
        print()
        return
    if args.dead_leaves:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            dl, ydl = dead_leaves_rows(args.dead_leaves, args.dead_leaves_samples, tmp)
        Hdl = np.array([hand_features(a) for a in dl])
        out["dead_leaves_rows"] = len(dl)
        out["dead_leaves_gbm"] = gbm(np.concatenate([Htr, Hdl]), np.concatenate([ytr, ydl]),
                                     Hte, yte)
        out["dead_leaves_only_gbm"] = gbm(Hdl, ydl, Hte, yte)
    Dtr, Dte = np.array([dct16_features(a) for a in tr]), np.array([dct16_features(a) for a in te])
    out["dct16_linear"] = linear(Dtr, ytr, Dte, yte)
    out["dct16_log_linear"] = linear(np.log(Dtr + 1e-4), ytr, np.log(Dte + 1e-4), yte)
    for init in args.inits.split(","):
        out[f"tower_probe/{init}"] = linear(tower_features(args.sft_config, init, tr), ytr,
                                             tower_features(args.sft_config, init, te), yte)
    out["seconds"] = round(time.time() - t0, 1)
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
