"""Greedy coreset on CPU: the fused fp16 pass (``greedy_coreset``) against the implementation it replaced.

One run, side by side (all on 128-d points, PatchCore's random projection):

- ``gaussian_50k`` / ``gaussian_100k``, 10 % picks: i.i.d. Gaussian points, no structure (the
  triangle inequality prunes nothing): ``greedy_coreset`` vs ``legacy_greedy`` (adbench's NumPy
  pruned loop before issue 17, kept below as the baseline), target >= 4x;
- ``elpv_patchcore_346k``, 10 % and 1 % picks: PatchCore features of the ELPV mono training cells
  (Lite0, 224 px, projected to 128 dims), target <= 200 s for 10 % on 2 idle cores or <= 1.5x the bound;
- ``bottle_patchcore_214k``, 10 %: MVTec bottle (256 px), clustered features, target: no slower
  than ``legacy_greedy``;
- ``gaussian_750k``, 1 %: target <= 5 min.

The bound: the machine's streaming read bandwidth (a 1 GiB fp32 sum on all cores, best of 3)
and one read of the fp16 points per pick: picks x N x d x 2 bytes / bandwidth. Each case reports
its time as a multiple of that bound, the rows it read (pruning skips rows), and the process's
system CPU time as a share of its CPU time (per-pick allocations and page faults show up there).

Exactness: ``greedy_coreset`` must give the picks of the straightforward fp32 loop
(``greedy_coreset_reference``); checked on 40k-point subsets of the real features and on the 50k
Gaussian case. Projected features are cached in ``.cache/bench/`` (gitignored).

    flock /tmp/adbench-cpu.lock python benchmarks/bench_coreset.py [--skip-legacy]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import save

from adbench.features.coreset import (
    CpuGreedy,
    _start,
    greedy_coreset_reference,
    project,
)

CACHE = REPO / ".cache" / "bench"


def legacy_greedy(points: torch.Tensor, n_select: int, seed: int = 0, refresh_every: int = 64) -> torch.Tensor:
    """adbench's ``greedy_coreset`` before issue 17 (commit 7790186), verbatim: NumPy, pruned by the
    triangle inequality per cluster, one thread. The baseline of the speed targets."""
    n = points.shape[0]
    x = points.detach().float().contiguous().numpy()
    start = _start(n, seed)
    min_sq = ((x - x[start]) ** 2).sum(1)
    assign = np.zeros(n, dtype=np.int64)
    centers = np.empty((n_select, x.shape[1]), dtype=np.float32)
    radius_sq = np.zeros(n_select, dtype=np.float32)
    centers[0], radius_sq[0] = x[start], min_sq.max()
    picks = np.empty(n_select, dtype=np.int64)
    picks[0] = start
    for j in range(1, n_select):
        nxt = int(np.argmax(min_sq))
        picks[j] = nxt
        c = x[nxt]
        centers[j] = c
        center_sq = ((centers[:j] - c) ** 2).sum(1)
        open_clusters = center_sq < 4 * radius_sq[:j]
        candidates = np.flatnonzero(open_clusters[assign])
        if candidates.size:
            d = ((x[candidates] - c) ** 2).sum(1)
            closer = d < min_sq[candidates]
            moved = candidates[closer]
            min_sq[moved] = d[closer]
            assign[moved] = j
            radius_sq[j] = d[closer].max() if moved.size else 0.0
        if j % refresh_every == 0:
            radius_sq[: j + 1] = 0.0
            np.maximum.at(radius_sq, assign, min_sq)
    return torch.from_numpy(picks)


@numba.njit(fastmath=True)
def _sum_block(a: np.ndarray) -> float:
    total = np.float32(0.0)
    for i in range(a.shape[0]):
        total += a[i]
    return total


@numba.njit(parallel=True)
def _parallel_sum(a: np.ndarray, parts: int) -> float:
    step = (a.shape[0] + parts - 1) // parts
    out = np.zeros(parts, np.float32)
    for p in numba.prange(parts):
        out[p] = _sum_block(a[p * step : min(a.shape[0], (p + 1) * step)])
    return out.sum()


def read_bandwidth(gib: float = 1.0, repeats: int = 3) -> dict:
    """Streaming read bandwidth (bytes/s) of one fp32 sum over ``gib`` GiB on all numba threads, best of ``repeats``."""
    a = np.ones(int(gib * 2**30) // 4, np.float32)
    threads = numba.get_num_threads()
    _parallel_sum(a[:1024], threads)
    best = min(_timed(lambda: _parallel_sum(a, threads))[1] for _ in range(repeats))
    return {"bytes_per_s": a.nbytes / best, "array_bytes": a.nbytes, "threads": threads}


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _cpu_times() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def fused(points: np.ndarray, n_select: int, bandwidth: float, seed: int = 0) -> dict:
    """Time ``greedy_coreset``'s CPU path on ``points``; its picks, and its time against the one-read-per-pick bound."""
    user0, sys0 = _cpu_times()
    began = time.perf_counter()
    run = CpuGreedy(points, n_select, _start(points.shape[0], seed))
    run.run(progress=False)
    seconds = time.perf_counter() - began
    user1, sys1 = _cpu_times()
    n, d = points.shape
    bound = n_select * n * d * 2 / bandwidth
    return {
        "picks": torch.from_numpy(run.picks),
        "seconds": seconds,
        "bound_seconds": bound,
        "times_bound": seconds / bound,
        "rows_read_fraction": run.stats["rows_read"] / (n * n_select),
        "pruned_picks": run.stats["pruned_picks"],
        "cpu_seconds": (user1 - user0) + (sys1 - sys0),
        "system_cpu_fraction": (sys1 - sys0) / max(1e-9, (user1 - user0) + (sys1 - sys0)),
    }


def case(name: str, points: np.ndarray, ratio: float, bandwidth: float, legacy: bool, target: str) -> dict:
    n_select = max(1, int(points.shape[0] * ratio))
    print(f"--- {name}: {points.shape[0]} x {points.shape[1]}, {n_select} picks", flush=True)
    new = fused(points, n_select, bandwidth)
    picks = new.pop("picks")
    row = {"points": list(points.shape), "ratio": ratio, "selected": n_select, "target": target, **new}
    if legacy:
        old, row["legacy_seconds"] = _timed(lambda: legacy_greedy(torch.from_numpy(points), n_select))
        row["speedup_vs_legacy"] = row["legacy_seconds"] / row["seconds"]
        # the legacy loop sums (x - c)^2 in NumPy's pairwise order: near-ties may resolve differently
        row["shared_picks_with_legacy"] = len(set(picks.tolist()) & set(old.tolist())) / n_select
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return row


def exactness(name: str, points: np.ndarray, ratio: float, bandwidth: float) -> dict:
    """``greedy_coreset`` vs the straightforward fp32 loop: the picks must be identical."""
    n_select = int(points.shape[0] * ratio)
    new = fused(points, n_select, bandwidth)
    ref, ref_s = _timed(lambda: greedy_coreset_reference(points, n_select))
    same = torch.equal(new["picks"], ref)
    row = {"points": list(points.shape), "selected": n_select, "seconds": new["seconds"], "reference_loop_seconds": ref_s,
           "identical_picks": bool(same),
           "first_different_pick": None if same else int((new["picks"] != ref).nonzero()[0])}
    print(f"--- exactness {name}: {row}", flush=True)
    return row


def patchcore_projection(name: str, overrides: list[str], device: str = "cpu") -> np.ndarray:
    """PatchCore's projected (128-d) patch features of a training set, built with the current config, cached."""
    path = CACHE / f"coreset_{name}.npy"
    if path.is_file():
        return np.load(path)
    from adbench.api import compose_config
    from adbench.features.patches import flatten_patches
    from adbench.pipeline import build_pipeline

    cfg = compose_config(["method=patchcore", f"device={device}", *overrides])
    pipeline = build_pipeline(cfg)
    method, train = pipeline.method, pipeline.train
    chunks = []
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(train, batch_size=16):
            chunks.append(project(flatten_patches(method.embed(batch["image"])), cfg.method.proj_dim, cfg.method.seed).cpu())
    points = torch.cat(chunks).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, points)
    return points


def subset(points: np.ndarray, size: int) -> np.ndarray:
    return np.ascontiguousarray(points[np.random.default_rng(0).permutation(points.shape[0])[:size]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-legacy", action="store_true", help="time only the new path (the legacy loop takes minutes)")
    args = parser.parse_args()
    legacy = not args.skip_legacy
    if not os.environ.get("ADBENCH_DATA"):
        raise SystemExit("set ADBENCH_DATA to the folder holding mvtec/bottle (e.g. ../shared/data)")
    elpv = patchcore_projection("elpv_mono_224", ["dataset=elpv", "dataset.category=mono"])
    bottle = patchcore_projection("bottle_256", ["dataset=mvtec", "dataset.category=bottle", "dataset.resize=256", "dataset.crop=256"])
    rng = np.random.default_rng(0)
    gaussian = {n: rng.standard_normal((n, 128), dtype=np.float32) for n in (50_000, 100_000, 750_000)}

    bandwidth = read_bandwidth()
    bw = bandwidth["bytes_per_s"]
    print(f"streaming read bandwidth: {bw / 1e9:.1f} GB/s ({bandwidth['threads']} threads)", flush=True)
    results: dict = {"read_bandwidth": bandwidth}
    runs = [
        ("gaussian_50k", lambda: case("gaussian_50k", gaussian[50_000], 0.1, bw, legacy, ">= 4x legacy")),
        ("gaussian_100k", lambda: case("gaussian_100k", gaussian[100_000], 0.1, bw, legacy, ">= 4x legacy")),
        ("elpv_patchcore_346k", lambda: case("elpv_patchcore_346k", elpv, 0.1, bw, False, "<= 200 s, or <= 1.5x bound")),
        ("elpv_patchcore_346k_1pct", lambda: case("elpv_patchcore_346k_1pct", elpv, 0.01, bw, False, "default run's coreset (PatchCore-1%)")),
        ("bottle_patchcore_214k", lambda: case("bottle_patchcore_214k", bottle, 0.1, bw, legacy, "no slower than legacy")),
        ("gaussian_750k_1pct", lambda: case("gaussian_750k_1pct", gaussian[750_000], 0.01, bw, False, "<= 300 s")),
        ("exactness_gaussian_50k", lambda: exactness("gaussian_50k", gaussian[50_000], 0.1, bw)),
        ("exactness_elpv_subset_40k", lambda: exactness("elpv_subset_40k", subset(elpv, 40_000), 0.1, bw)),
        ("exactness_bottle_subset_40k", lambda: exactness("bottle_subset_40k", subset(bottle, 40_000), 0.1, bw)),
    ]
    for name, measure in runs:
        results[name] = measure()
        save("coreset", results)  # a killed run keeps what it measured
    print("\ncase                        points        picks  seconds  x bound  rows read  sys/CPU  legacy s  speedup")
    for name, r in results.items():
        if "times_bound" in r:
            legacy_s = f"{r['legacy_seconds']:8.1f}  {r['speedup_vs_legacy']:6.1f}x" if "legacy_seconds" in r else ""
            print(f"{name:<27} {r['points'][0]:>7}x{r['points'][1]:<4} {r['selected']:>7} {r['seconds']:8.1f} {r['times_bound']:8.2f} "
                  f"{r['rows_read_fraction']:9.1%} {r['system_cpu_fraction']:8.1%} {legacy_s}")
    print(save("coreset", results))


if __name__ == "__main__":
    main()
