"""Median milliseconds per operator on a 512x512 RGB image, and for full random chains; JSON out.

Run: .venv/bin/python tests/benchmarks/bench_degrade.py [--repeats N]
Each operator runs through `apply_chain` (uint8 in/out, one quantization) at the midpoint of its
train range; "chain" draws a fresh random train chain per repeat; "cues" times `measure_cues`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
from skimage import data

from dutrain.degrade import apply_chain, measure_cues, sample_chain
from dutrain.schema import TAXONOMY


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(1000 * float(np.median(times)), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    img = data.astronaut()
    assert img.shape == (512, 512, 3)
    out: dict[str, object] = {"image": "skimage.data.astronaut 512x512x3", "repeats": args.repeats,
                              "python": platform.python_version(), "ms": {}}
    for t, spec in TAXONOMY.items():
        params = {p.key: p.snap((p.train[0] + p.train[1]) / 2) for p in spec.params}
        ann = {"degradations": [{"type": t, "params": params}]}
        out["ms"][t] = median_ms(lambda: apply_chain(img, ann, 0), args.repeats)
        out.setdefault("params", {})[t] = params
    rng = np.random.default_rng(0)
    out["ms"]["chain (random train, clean_fraction=0)"] = median_ms(
        lambda: apply_chain(img, sample_chain(rng, "train", clean_fraction=0.0),
                            int(rng.integers(2**31))),
        args.repeats * 2)
    out["ms"]["measure_cues 512x512"] = median_ms(lambda: measure_cues(img), args.repeats)
    crop = np.ascontiguousarray(img[::4, ::4])
    out["ms"]["measure_cues 128x128"] = median_ms(lambda: measure_cues(crop), args.repeats)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
