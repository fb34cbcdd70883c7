"""Greedy coreset subsampling (PatchCore, Sec. 3.2): farthest-point selection on a random projection.

Features are projected to ``proj_dim`` (128) dimensions with a fixed Gaussian matrix
(Johnson-Lindenstrauss), then the exact greedy k-center rule picks, at each step, the point farthest
from all picks so far. ``greedy_coreset`` gives the same picks as the straightforward loop
(``greedy_coreset_reference``) but skips most distance updates with the triangle inequality: a point
x assigned to center c_j (distance m(x)) can only get closer to a new center c when
d(c, c_j) < 2 m(x), so whole clusters with d(c, c_j) >= 2 R_j (R_j their radius) are skipped.
"""

from __future__ import annotations

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
    """The straightforward greedy loop: one full distance update over all points per pick."""
    start = _start(points.shape[0], seed)
    min_sq = ((points - points[start]) ** 2).sum(1)
    picks = [start]
    for _ in range(n_select - 1):
        nxt = int(torch.argmax(min_sq))
        picks.append(nxt)
        min_sq = torch.minimum(min_sq, ((points - points[nxt]) ** 2).sum(1))
    return torch.tensor(picks)


def greedy_coreset(points: torch.Tensor, n_select: int, seed: int = 0, refresh_every: int = 64) -> torch.Tensor:
    """Exact greedy k-center picks (same as the reference loop), pruned by the triangle inequality.

    On CUDA the plain update is already fast, so the full update is used there.
    """
    n = points.shape[0]
    n_select = max(1, min(n_select, n))
    if points.is_cuda:
        return greedy_coreset_reference(points, n_select, seed).to(points.device)
    points = points.float().contiguous()
    start = _start(n, seed)
    min_sq = ((points - points[start]) ** 2).sum(1)  # m(x)^2: squared distance to the nearest pick
    assign = torch.zeros(n, dtype=torch.long)  # index (into picks) of each point's nearest pick
    centers = torch.empty(n_select, points.shape[1])
    radius_sq = torch.zeros(n_select)  # upper bound of m(x)^2 over each pick's cluster
    centers[0], radius_sq[0] = points[start], min_sq.max()
    picks = torch.empty(n_select, dtype=torch.long)
    picks[0] = start
    for j in range(1, n_select):
        nxt = int(torch.argmax(min_sq))
        picks[j] = nxt
        c = points[nxt]
        centers[j] = c
        center_sq = ((centers[:j] - c) ** 2).sum(1)
        # d(c, c_j) < 2 R_j  <=>  d^2 < 4 R_j^2: only those clusters can hold points that move
        open_clusters = center_sq < 4 * radius_sq[:j]
        candidates = torch.nonzero(open_clusters[assign], as_tuple=True)[0]
        if candidates.numel():
            d = ((points[candidates] - c) ** 2).sum(1)
            closer = d < min_sq[candidates]
            moved = candidates[closer]
            min_sq[moved] = d[closer]
            assign[moved] = j
            radius_sq[j] = d[closer].max() if moved.numel() else 0.0
        if j % refresh_every == 0:  # tighten the (still valid) stale radius bounds
            radius_sq[: j + 1] = torch.zeros(j + 1).scatter_reduce(0, assign, min_sq, "amax", include_self=True)
    return picks


def coreset_indices(features: torch.Tensor, ratio: float, proj_dim: int | None = 128, seed: int = 0) -> torch.Tensor:
    """Indices of the ``ratio`` fraction of ``features`` picked by greedy coreset (ratio >= 1: all)."""
    n = features.shape[0]
    if ratio >= 1.0:
        return torch.arange(n)
    if ratio <= 0:
        raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
    return greedy_coreset(project(features, proj_dim, seed), max(1, int(n * ratio)), seed)
