"""Greedy coreset subsampling (PatchCore, Sec. 3.2): farthest-point selection on a random projection.

Features are projected to ``proj_dim`` (128) dimensions with a fixed Gaussian matrix
(Johnson-Lindenstrauss), then the exact greedy k-center rule picks, at each step, the point farthest
from all picks so far. ``greedy_coreset`` gives the same picks as the straightforward loop
(``greedy_coreset_reference``) but skips most distance updates with the triangle inequality: a point
x assigned to center c_j (distance m(x)) can only get closer to a new center c when
d(c, c_j) < 2 m(x), so whole clusters with d(c, c_j) >= 2 R_j (R_j their radius) are skipped.
"""

from __future__ import annotations

import numpy as np
import torch


def project(features: torch.Tensor, proj_dim: int | None = 128, seed: int = 0) -> torch.Tensor:
    """Random Gaussian projection to ``proj_dim`` dims (no-op when None or >= the input dims)."""
    features = features.float()
    if proj_dim is None or proj_dim >= features.shape[1]:
        return features
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(features.shape[1], proj_dim, generator=generator) / proj_dim**0.5
    return features @ matrix.to(features.device)


def _start(n: int, seed: int) -> int:
    return int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))


def greedy_coreset_reference(points: torch.Tensor, n_select: int, seed: int = 0) -> torch.Tensor:
    """The straightforward greedy loop: one full distance update over all points per pick (NumPy)."""
    x = points.detach().float().contiguous().cpu().numpy()
    start = _start(x.shape[0], seed)
    min_sq = ((x - x[start]) ** 2).sum(1)
    picks = [start]
    for _ in range(n_select - 1):
        nxt = int(np.argmax(min_sq))
        picks.append(nxt)
        np.minimum(min_sq, ((x - x[nxt]) ** 2).sum(1), out=min_sq)
    return torch.tensor(picks)


def greedy_coreset_full(points: torch.Tensor, n_select: int, seed: int = 0) -> torch.Tensor:
    """The per-pick loop as PatchCore implementations write it: after each pick, every point's
    distance to it, ||x||^2 - 2 x.c + ||c||^2 (one matrix-vector product), updates the minimum.

    Used on CUDA, where it is fast; on CPU it is the baseline of ``benchmarks/bench_coreset.py``.
    Its rounding differs from the exact (x - c)^2 sums, so near-ties can resolve differently.
    """
    sq = points.square().sum(1)
    start = _start(points.shape[0], seed)
    min_sq = (sq - 2 * points @ points[start] + sq[start]).clamp_min_(0)
    picks = torch.empty(n_select, dtype=torch.long, device=points.device)
    picks[0] = start
    for j in range(1, n_select):
        picks[j] = torch.argmax(min_sq)
        torch.minimum(min_sq, sq - 2 * points @ points[picks[j]] + sq[picks[j]], out=min_sq)
    return picks


def greedy_coreset(points: torch.Tensor, n_select: int, seed: int = 0, refresh_every: int = 64) -> torch.Tensor:
    """Exact greedy k-center picks (same as the reference loop), pruned by the triangle inequality.

    The CPU loop runs in NumPy: many small single-threaded steps, which stay fast when the machine is
    shared (small multi-threaded torch ops stall on thread barriers under oversubscription). On CUDA
    the plain full update is already fast and is used there.
    """
    n = points.shape[0]
    n_select = max(1, min(n_select, n))
    if points.is_cuda:
        return greedy_coreset_full(points.float(), n_select, seed)
    x = points.detach().float().contiguous().numpy()
    start = _start(n, seed)
    min_sq = ((x - x[start]) ** 2).sum(1)  # m(x)^2: squared distance to the nearest pick
    assign = np.zeros(n, dtype=np.int64)  # index (into picks) of each point's nearest pick
    centers = np.empty((n_select, x.shape[1]), dtype=np.float32)
    radius_sq = np.zeros(n_select, dtype=np.float32)  # upper bound of m(x)^2 over each pick's cluster
    centers[0], radius_sq[0] = x[start], min_sq.max()
    picks = np.empty(n_select, dtype=np.int64)
    picks[0] = start
    for j in range(1, n_select):
        nxt = int(np.argmax(min_sq))
        picks[j] = nxt
        c = x[nxt]
        centers[j] = c
        center_sq = ((centers[:j] - c) ** 2).sum(1)
        # d(c, c_j) < 2 R_j  <=>  d^2 < 4 R_j^2: only those clusters can hold points that move
        open_clusters = center_sq < 4 * radius_sq[:j]
        candidates = np.flatnonzero(open_clusters[assign])
        if candidates.size:
            d = ((x[candidates] - c) ** 2).sum(1)
            closer = d < min_sq[candidates]
            moved = candidates[closer]
            min_sq[moved] = d[closer]
            assign[moved] = j
            radius_sq[j] = d[closer].max() if moved.size else 0.0
        if j % refresh_every == 0:  # tighten the (still valid) stale radius bounds
            radius_sq[: j + 1] = 0.0
            np.maximum.at(radius_sq, assign, min_sq)
    return torch.from_numpy(picks)


def coreset_indices(features: torch.Tensor, ratio: float, proj_dim: int | None = 128, seed: int = 0) -> torch.Tensor:
    """Indices of the ``ratio`` fraction of ``features`` picked by greedy coreset (ratio >= 1: all)."""
    n = features.shape[0]
    if ratio >= 1.0:
        return torch.arange(n)
    if ratio <= 0:
        raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
    return greedy_coreset(project(features, proj_dim, seed), max(1, int(n * ratio)), seed)
