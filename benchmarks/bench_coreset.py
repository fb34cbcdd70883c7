"""Greedy coreset: pruned exact greedy vs the straightforward per-pick loop (same picks).

The baseline is the loop PatchCore implementations run: per pick, a full torch update of every
point's distance to its nearest pick by one matrix-vector product (``greedy_coreset_full``, all
cores); each of its picks costs one pass over all points, so it runs the first 2,000 picks and its
time is scaled to all picks. Its rounding differs from exact (x - c)^2 sums, so the share of common
picks is reported; exactness is checked against the exact reference loop (``greedy_coreset_reference``)
on a 40k subset.

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
from adbench.features.coreset import greedy_coreset, greedy_coreset_full, greedy_coreset_reference, project


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def compare(points: torch.Tensor, ratio: float, loop_picks: int = 2000) -> dict:
    """Pruned greedy vs the per-pick loop (the baseline). Every pick of the loop costs the same (one pass
    over all points), so the loop runs its first ``loop_picks`` picks and its time is scaled to all of
    them; greedy picks are prefix-consistent, so those picks are compared with the pruned run's first ones."""
    n_select = int(points.shape[0] * ratio)
    fast, fast_s = timed(greedy_coreset, points, n_select)
    m = min(n_select, loop_picks)
    loop, loop_part_s = timed(greedy_coreset_full, points, m)
    loop_s = loop_part_s * (n_select - 1) / (m - 1)
    same = torch.equal(fast[:m], loop)
    return {
        "points": list(points.shape), "selected": n_select, "pruned_greedy_s": fast_s, "per_pick_loop_s": loop_s,
        "per_pick_loop_measured_picks": m, "per_pick_loop_measured_s": loop_part_s,
        "speedup": loop_s / fast_s, "same_picks_as_loop": same,
        "first_different_pick": None if same else int((fast[:m] != loop).nonzero()[0]),
        "shared_picks_fraction": len(set(fast[:m].tolist()) & set(loop.tolist())) / m,
    }


def exactness(points: torch.Tensor, ratio: float) -> dict:
    """Pruned greedy vs the exact reference loop (same (x - c)^2 arithmetic): the picks must be identical."""
    n_select = int(points.shape[0] * ratio)
    fast, fast_s = timed(greedy_coreset, points, n_select)
    ref, ref_s = timed(greedy_coreset_reference, points, n_select)
    return {"points": list(points.shape), "selected": n_select, "pruned_greedy_s": fast_s, "reference_loop_s": ref_s,
            "identical_picks": bool(torch.equal(fast, ref))}


def main() -> None:
    torch.manual_seed(0)
    real = bottle_patch_features(crop=256)
    basis, _ = torch.linalg.qr(torch.randn(1024, real.shape[1]))
    projected = project(real @ basis.T, 128)  # (N, 1024) with real pairwise distances, then PatchCore's projection
    results = {"bottle_lite0_1024d": compare(projected, 0.1)}
    subset = projected[torch.randperm(projected.shape[0])[:40_000]]
    results["exactness_bottle_subset_40k"] = exactness(subset, 0.1)
    results["gaussian_50k_1024d"] = compare(project(torch.randn(50_000, 1024), 128), 0.1)
    for name, r in results.items():
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()})
    print(save("coreset", results))


if __name__ == "__main__":
    main()
