"""Greedy coreset subsampling (PatchCore, Sec. 3.2): farthest-point selection on a random projection.

Features are projected to ``proj_dim`` (128) dimensions with a fixed Gaussian matrix
(Johnson-Lindenstrauss), then the exact greedy k-center rule picks, at each step, the point farthest
from all picks so far: ``greedy_coreset(points, n_select, seed)``.

On CPU every pick is one fused pass over all points, stored in fp16, on all cores
(``coreset_kernels``); its picks are bit-identical to the straightforward fp32 loop
(``greedy_coreset_reference``). Triangle-inequality pruning skips the rows that cannot move; it is
switched on and off during the run by what it saves (see ``_PruneChoice``). On CUDA the per-pick
loop (``greedy_coreset_full``) runs on the device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numba
import numpy as np
import torch
from tqdm.auto import tqdm

from . import coreset_kernels as kernels
from .store import FeatureStore

# fp16 keeps |values| <= 65504: the centred points are scaled by a power of two to at most 2^14
FP16_RANGE = 2.0**14
SEGMENT_SECONDS = 0.5  # picks run between two progress updates / pruning decisions
PROGRESS_AFTER_S = 2.0  # the progress bar (picks, ETA; stderr) appears only on runs longer than this
CHUNK_ROWS = 65536  # rows per block of the blockwise passes (bounded temporaries)


def projection_matrix(dims: int, proj_dim: int, seed: int = 0) -> torch.Tensor:
    """The fixed Gaussian matrix (dims, proj_dim), entries N(0, 1 / proj_dim)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(dims, proj_dim, generator=generator) / proj_dim**0.5


def project(
    features: torch.Tensor | FeatureStore,
    proj_dim: int | None = 128,
    seed: int = 0,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    basis: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random Gaussian projection to ``proj_dim`` dims (none when None or >= the dims), block by block.

    ``features``: an (N, D) tensor or a ``FeatureStore``; ``transform`` (e.g. a learned layer) is
    applied to each block first. Besides the (N, proj_dim) result only one block is held in float32.
    ``device``: where to compute (default: the tensor's device; CPU for a store). ``basis`` (W, D),
    orthonormal columns: the rows are coordinates of the W-dim vectors basis·x (a low-rank embedding,
    ``patches.LowRank``), projected as those would be: with basisᵀ·P, P the (W, proj_dim) matrix
    (no projection when proj_dim is None or >= W: distances between coordinates are already theirs).
    """
    if device is None:
        device = features.device if isinstance(features, torch.Tensor) else torch.device("cpu")
    blocks = (
        (features[i : i + CHUNK_ROWS].to(device) for i in range(0, features.shape[0], CHUNK_ROWS))
        if isinstance(features, torch.Tensor) else features.chunks(device)
    )
    out = matrix = None
    start = 0
    for block in blocks:
        block = (block if transform is None else transform(block)).float()
        if out is None:
            width = block.shape[1] if basis is None else basis.shape[0]
            if proj_dim is not None and proj_dim < width:
                matrix = projection_matrix(width, proj_dim, seed)
                matrix = (matrix if basis is None else (basis.double().cpu().T @ matrix.double()).float()).to(device)
            out = torch.empty(len(features), block.shape[1] if matrix is None else proj_dim, device=device)
        out[start : start + len(block)] = block if matrix is None else block @ matrix
        start += len(block)
    return out if out is not None else torch.empty(0, proj_dim or 0)


def _start(n: int, seed: int) -> int:
    return int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))


def _as_float32_numpy(points: torch.Tensor | np.ndarray) -> np.ndarray:
    """The points as a C-contiguous float32 array (no copy when they already are one)."""
    x = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    return np.ascontiguousarray(x, dtype=np.float32)


def greedy_coreset_reference(points: torch.Tensor | np.ndarray, n_select: int, seed: int = 0) -> torch.Tensor:
    """The straightforward greedy loop in NumPy: after each pick, every point's squared distance to it,
    sum_k (x_k - c_k)^2 accumulated over k = 0..d-1 in fp32, lowers its minimum; next pick: the first
    arg-max of the minima. The definition the fast path is tested against."""
    x = _as_float32_numpy(points)
    columns = np.ascontiguousarray(x.T)  # one vectorised fp32 update per dimension, in order

    def sq_distances(c: np.ndarray) -> np.ndarray:
        acc = np.zeros(x.shape[0], np.float32)
        for k in range(x.shape[1]):
            diff = columns[k] - c[k]
            acc += diff * diff
        return acc

    picks = [_start(x.shape[0], seed)]
    min_sq = sq_distances(x[picks[0]])
    for _ in range(n_select - 1):
        picks.append(int(np.argmax(min_sq)))
        np.minimum(min_sq, sq_distances(x[picks[-1]]), out=min_sq)
    return torch.tensor(picks)


def greedy_coreset_full(points: torch.Tensor, n_select: int, seed: int = 0) -> torch.Tensor:
    """The per-pick loop as PatchCore implementations write it: after each pick, every point's
    distance to it, ||x||^2 - 2 x.c + ||c||^2 (one matrix-vector product), updates the minimum.

    The CUDA path (no host synchronisation inside the loop); on CPU the baseline of
    ``benchmarks/bench_coreset.py``. Its rounding differs from the exact (x - c)^2 sums, so
    near-ties can resolve differently.
    """
    sq = points.square().sum(1)
    start = _start(points.shape[0], seed)
    min_sq = (sq - 2 * points @ points[start] + sq[start]).clamp_min_(0)
    picks = torch.empty(n_select, dtype=torch.long, device=points.device)
    picks[0] = start
    update = torch.empty_like(min_sq)
    for j in range(1, n_select):
        picks[j] = torch.argmax(min_sq)
        torch.addmv(sq, points, points[picks[j]], alpha=-2, out=update)  # ||x||^2 - 2 x.c
        update.add_(sq[picks[j]])
        torch.minimum(min_sq, update, out=min_sq)
    return picks


class _PruneChoice:
    """Pruning on or off for the next segment of picks, by measured seconds per pick.

    Pruned, a pick reads only the rows the triangle inequality cannot rule out (scattered) plus the
    rows of all earlier picks; unpruned, every fp16 row once, streamed. Which is faster depends on
    the data and changes as the minima shrink and picks accumulate, so the mode that ran is timed on
    every segment and the other one re-timed on a short segment each time the number of picks has
    doubled since it was last timed; the faster one runs.
    """

    def __init__(self):
        self.seconds_per_pick: dict[bool, float] = {}
        self.timed_at: dict[bool, int] = {}

    def record(self, prune: bool, picks_done: int, seconds_per_pick: float) -> None:
        self.seconds_per_pick[prune], self.timed_at[prune] = seconds_per_pick, picks_done

    def next(self, picks_done: int) -> tuple[bool, bool]:
        """(prune, probe): the mode of the next segment, and whether it is a short re-timing."""
        for mode in (True, False):
            if mode not in self.timed_at or picks_done >= 2 * self.timed_at[mode]:
                return mode, True
        return self.seconds_per_pick[True] < self.seconds_per_pick[False], False


def greedy_coreset(points: torch.Tensor | np.ndarray, n_select: int, seed: int = 0, progress: bool = True) -> torch.Tensor:
    """Exact greedy k-center picks: indices (n_select,) of the (N, d) float ``points``.

    The first pick is drawn with ``seed``; each next one is the point farthest from all picks so
    far (first index on ties). On CPU: the same picks as ``greedy_coreset_reference``, in one fused
    multi-threaded pass per pick over an fp16 copy (besides the points: N x d x 2 bytes, the picks'
    rows and 5 numbers per point), pruned where that pays. On CUDA: ``greedy_coreset_full``. ``progress``: a bar with picks and ETA on
    stderr for runs longer than a few seconds.
    """
    n = points.shape[0]
    n_select = max(1, min(int(n_select), n))
    if isinstance(points, torch.Tensor) and points.is_cuda:
        return greedy_coreset_full(points.float(), n_select, seed)
    run = CpuGreedy(_as_float32_numpy(points), n_select, _start(n, seed))
    run.run(progress)
    return torch.from_numpy(run.picks)


class CpuGreedy:
    """One CPU greedy run: the fp16 copy, per-point minima and thresholds (see ``coreset_kernels``).

    ``stats`` after ``run``: rows the passes read, exact fp32 distances they computed, picks made with pruning on.
    """

    def __init__(self, x: np.ndarray, n_select: int, start: int):
        n, d = x.shape
        self.x = x
        total = np.zeros(d)
        for block in _blocks(x):
            total += block.sum(0, dtype=np.float64)
        if not np.isfinite(total).all():  # float64 sums of float32 values overflow only through NaN or inf
            raise ValueError("greedy_coreset: the points contain NaN or inf")
        self.mean = (total / n).astype(np.float32)
        max_abs = max_norm = 0.0
        for block in _blocks(x):
            centred = block - self.mean
            max_abs = max(max_abs, float(np.abs(centred).max()))
            max_norm = max(max_norm, float(np.linalg.norm(centred, axis=1).max()))
        self.scale = 2.0 ** math.floor(math.log2(FP16_RANGE / max_abs)) if max_abs > 0 else 1.0
        self.h = np.empty((n, d), np.uint16)
        self.err = np.empty(n, np.float32)
        # the scaled center s (c - mu) is rounded once in fp32: at most u s ||c - mu|| from the real one
        kernels.encode(x, self.mean, self.scale, self.h, self.err, kernels.UNIT_ROUNDOFF * self.scale * max_norm * 1.01)
        self.min_sq = np.full(n, np.inf, np.float32)  # exact squared distance to the nearest pick
        self.thr = np.full(n, np.inf, np.float32)  # approximate distances below this need the exact one
        self.assign = np.zeros(n, np.int32)  # index (into picks) of each point's nearest pick
        self.cand = np.empty(n, np.int32)  # rows a pruned pass must read, listed per chunk
        self.centers = np.empty((n_select, d), np.float32)  # the picked rows (the projected coreset)
        self.cc = np.zeros(n_select, np.float32)  # squared distances of the current pick to the earlier ones
        self.picks = np.empty(n_select, np.int64)
        self.picks[0] = start
        self.gamma = kernels.rounding_slack(d)
        self.stats = {"rows_read": 0, "exact_distances": 0, "pruned_picks": 0}

    def picks_between(self, start: int, stop: int, prune: bool) -> int:
        """Make picks ``start``..``stop - 1``; returns the rows the passes read."""
        threads, before = kernels.threads_for(self.h.nbytes), numba.get_num_threads()
        numba.set_num_threads(threads)  # this thread's parallel regions only
        try:
            rows, exact = kernels.greedy_picks(
                self.x, self.h, self.mean, self.scale, self.min_sq, self.thr, self.err, self.assign, self.centers, self.cc, self.cand,
                self.picks, start, stop, prune, self.gamma, threads,
            )
        finally:
            numba.set_num_threads(before)
        self.stats["rows_read"] += int(rows)
        self.stats["exact_distances"] += int(exact)
        self.stats["pruned_picks"] += (stop - start) if prune else 0
        return int(rows)

    def run(self, progress: bool = True) -> None:
        """All picks, in segments of about ``SEGMENT_SECONDS``: progress and the pruning choice between them."""
        total = self.picks.shape[0]
        choice = _PruneChoice()
        bar = tqdm(total=total, desc="greedy coreset", unit="pick", delay=PROGRESS_AFTER_S, leave=False, disable=not progress)
        self.picks_between(0, 1, prune=False)  # the first pick sets every minimum: nothing to prune against
        bar.update(1)
        done, step, prune = 1, 1, True
        while done < total:
            stop = min(total, done + step)
            began = time.perf_counter()
            self.picks_between(done, stop, prune)
            per_pick = (time.perf_counter() - began) / (stop - done)
            choice.record(prune, stop, per_pick)
            bar.update(stop - done)
            done = stop
            prune, probe = choice.next(done)
            rate = choice.seconds_per_pick.get(prune, per_pick)
            step = max(1, min(4 * step, int(SEGMENT_SECONDS / rate)))
            if probe:
                step = max(1, step // 8)
        bar.close()


def _blocks(x: np.ndarray, rows: int = CHUNK_ROWS):
    return (x[i : i + rows] for i in range(0, x.shape[0], rows))


def coreset_indices(
    features: torch.Tensor | FeatureStore,
    ratio: float,
    proj_dim: int | None = 128,
    seed: int = 0,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    basis: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indices of the ``ratio`` fraction of ``features`` picked by greedy coreset on their projection
    (ratio >= 1: all). ``transform``, ``device`` and ``basis`` as in ``project``."""
    n = len(features)
    if ratio >= 1.0:
        return torch.arange(n)
    if ratio <= 0:
        raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
    return greedy_coreset(project(features, proj_dim, seed, transform, device, basis), max(1, int(n * ratio)), seed)
