"""AUPRO speed: 100 anomaly maps of 256x256 (half of them with defect regions). Target < 1 s.

    python benchmarks/bench_aupro.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import save

from adbench.metrics import aupro, auroc


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    rng = np.random.default_rng(0)
    masks = np.zeros((100, 256, 256), bool)
    for i in range(50):
        for _ in range(3):
            y, x = rng.integers(0, 220, 2)
            h, w = rng.integers(4, 36, 2)
            masks[i, y : y + h, x : x + w] = True
    maps = (rng.random(masks.shape) + 0.5 * masks).astype(np.float32)
    timings = {}
    for name, fn in (("aupro", aupro), ("pixel_auroc", auroc)):
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            value = fn(maps, masks)
            runs.append(time.perf_counter() - start)
        timings[name] = {"best_s": min(runs), "value": value}
        print(f"{name} over 100 maps of 256x256: {min(runs):.3f} s (best of 3), value {value:.4f}")
    print(save("aupro", timings))


if __name__ == "__main__":
    main()
