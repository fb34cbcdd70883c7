"""Greedy coreset: pruned exact greedy vs the straightforward per-pick loop (same picks).

The baseline is the loop PatchCore implementations run: per pick, a full torch update of every
point's distance to its nearest pick (``greedy_coreset_full``, all cores).

Features: MVTec bottle patch features (EfficientNet-Lite0, 256 px → 214k patches x 152 dims) mapped
isometrically (random orthonormal columns) to 1024 dims, so distances are those of real features at
PatchCore's dimensionality; both selectors run on the same 128-d random projection and pick 10%.
Also reports i.i.d. Gaussian features (no structure: the pruning's worst case) on a smaller set.

    ADBENCH_DATA=../shared/data python benchmarks/bench_coreset.py
"""

from __future__ import annotations

import time

import torch

from _common import bottle_patch_features, save
from adbench.coreset import greedy_coreset, greedy_coreset_full, project


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def compare(points: torch.Tensor, ratio: float) -> dict:
    n_select = int(points.shape[0] * ratio)
    fast, fast_s = timed(greedy_coreset, points, n_select)
    ref, ref_s = timed(greedy_coreset_full, points, n_select)
    return {
        "points": list(points.shape), "selected": n_select, "pruned_greedy_s": fast_s,
        "reference_loop_s": ref_s, "speedup": ref_s / fast_s, "identical_picks": bool(torch.equal(fast, ref)),
        "first_different_pick": None if torch.equal(fast, ref) else int((fast != ref).nonzero()[0]),
    }


def main() -> None:
    torch.manual_seed(0)
    real = bottle_patch_features(crop=256)
    basis, _ = torch.linalg.qr(torch.randn(1024, real.shape[1]))
    features = real @ basis.T  # (N, 1024), pairwise distances unchanged
    results = {"bottle_lite0_1024d": compare(project(features, 128), 0.1)}
    gaussian = torch.randn(50_000, 1024)
    results["gaussian_50k_1024d"] = compare(project(gaussian, 128), 0.1)
    for name, r in results.items():
        print(f"{name}: {r['points']} → {r['selected']} picks; reference loop {r['reference_loop_s']:.1f} s, "
              f"pruned greedy {r['pruned_greedy_s']:.1f} s, speed-up {r['speedup']:.1f}x, identical picks: {r['identical_picks']}")
    print(save("coreset", results))


if __name__ == "__main__":
    main()
