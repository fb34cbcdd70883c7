"""Numba kernels of the exact greedy coreset on CPU: one fused pass per pick over fp16-stored points.

A pick of exact greedy k-center must look at every point (or prove with the triangle inequality that
it need not), so on CPU it is bound by memory bandwidth. The pass therefore reads a compact copy:
``h = fp16(s (x - mu))`` (half the bytes of fp32; ``mu`` the mean, ``s`` a power of two that keeps
fp16 in range) and, per point, in one loop split over all numba threads: approximate distance to the
new center, comparison with the point's current minimum, and the running arg-max that gives the next
pick. All buffers are allocated once per run: nothing per pick.

The picks stay exactly those of the fp32 greedy loop: the approximate distance D' carries a proven
error bound (the stored point's exact distance to the real one, ``err``, plus fp32 rounding of at
most ``gamma`` relative), and only a point whose D' falls below its threshold ``thr`` -- where the
exact fp32 distance could be smaller than its minimum -- has that exact distance computed, from the
fp32 points, with the reference arithmetic: sum_k (x_k - c_k)^2 accumulated in order k = 0..d-1 in
fp32 without fused multiply-adds (``exact_sq``; the streamed loop only lists such points, ``_settle``
computes them after it, out of the vectorised loop). So the minimum distances, and with them every
pick and tie (first index of the maximum, like ``np.argmax``), are bit-identical to the straightforward
loop. Only the approximate sums may be reassociated and fused (``APPROX`` fast-math flags).

Triangle-inequality pruning (``prune=True``): a point x whose nearest pick is c_a can only move to
the new pick c when d(c, c_a) < 2 d(x, c_a); points with d(c, c_a)^2 >= 4 m(x) (with rounding slack)
are skipped without reading their row, at the cost of the new pick's distances to all picks so far.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

UNIT_ROUNDOFF = 2.0**-24  # u of fp32
APPROX = {"reassoc", "contract"}  # free summation order and FMA in the approximate pass only
PREFETCH_AHEAD = 8  # listed rows requested this many rows ahead of their use (scattered reads)
PARALLEL_MIN_BYTES = 4 * 2**20  # passes over fewer bytes run on one thread


def rounding_slack(dims: int) -> float:
    """gamma: relative error bound of an fp32 sum of ``dims`` squared differences, any order: (dims + 2) u, with a 2x margin."""
    return 2.0 * (dims + 4) * UNIT_ROUNDOFF


@intrinsic
def _half_to_float(typingctx, bits):
    """fp16 bits (uint16) -> float32, exact (vcvtph2ps on x86)."""

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def _float_to_half(typingctx, value):
    """float32 -> fp16 bits (uint16), round to nearest even."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


@intrinsic
def _prefetch_row(typingctx, rows, i):
    """Ask for the cache lines of ``rows[i]`` (a C-contiguous 2-D array) ahead of their use."""

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        row = cgutils.get_item_pointer(context, builder, array_type, array, [index, zero], wraparound=False)
        byte = ir.IntType(8).as_pointer()
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte, ir.IntType(32), ir.IntType(32), ir.IntType(32)]), "llvm.prefetch.p0")
        row_bytes = builder.mul(builder.extract_value(array.shape, 1), context.get_constant(types.intp, array_type.dtype.bitwidth // 8))
        start = builder.bitcast(row, byte)
        with cgutils.for_range_slice(builder, zero, row_bytes, context.get_constant(types.intp, 64)) as (offset, _):
            builder.call(prefetch, [builder.gep(start, [offset]), ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 3), ir.Constant(ir.IntType(32), 1)])
        return context.get_dummy_value()

    return types.none(rows, i), codegen


@intrinsic
def _opaque(typingctx, value):
    """``value`` unchanged, through an empty inline-asm statement the optimiser cannot see through."""

    def codegen(context, builder, signature, args):
        bits = builder.asm(ir.FunctionType(ir.IntType(32), [ir.IntType(32)]), "", "=r,0", [builder.bitcast(args[0], ir.IntType(32))], False)
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(types.float32), codegen


@njit(cache=True)
def exact_sq(x: np.ndarray, c: np.ndarray) -> np.float32:
    """The reference arithmetic: sum_k (x_k - c_k)^2 in fp32, in order, no FMA.

    Numba compiles a callee with its first caller's fast-math flags (numba issue #7168), so every
    product and partial sum goes through ``_opaque``: no flag can reorder the sum or fuse it into FMAs.
    """
    acc = np.float32(0.0)
    for k in range(x.shape[0]):
        diff = x[k] - c[k]
        acc = _opaque(acc + _opaque(diff * diff))
    return acc


@njit(cache=True)
def threshold(min_sq: float, err: float, scale: float, gamma: float) -> np.float32:
    """Smallest approximate (scaled) distance D' that proves the exact distance >= ``min_sq``.

    exact >= (1 - gamma) d^2 and s d >= sqrt(D' / (1 + gamma)) - err, so D' >= (1 + gamma)(s sqrt(min_sq / (1 - gamma)) + err)^2
    suffices; computed in float64 and rounded up to fp32.
    """
    root = scale * math.sqrt(min_sq / (1.0 - gamma)) + err
    return np.float32((1.0 + gamma) * root * root * (1.0 + 4 * UNIT_ROUNDOFF))


@njit(parallel=True, cache=True)
def encode(x: np.ndarray, mean: np.ndarray, scale: float, h: np.ndarray, err: np.ndarray, center_err: float) -> None:
    """h = fp16(s (x - mu)); err = ||h - s (x - mu)|| (float64, exact up to 1e-16) + ``center_err``, rounded up."""
    n, d = x.shape
    for i in prange(n):
        total = 0.0
        for k in range(d):
            target = scale * (np.float64(x[i, k]) - np.float64(mean[k]))
            h[i, k] = _float_to_half(np.float32(scale * (x[i, k] - mean[k])))
            gap = np.float64(_half_to_float(h[i, k])) - target
            total += gap * gap
        err[i] = np.float32((math.sqrt(total) + center_err) * (1.0 + 1e-6))


@njit(cache=True)
def _settle(x, c, min_sq, thr, err, assign, cand, lo, count, pick, scale, gamma, best, best_i):
    """Exact distances of the listed points ``cand[lo:lo + count]``, with the reference arithmetic; their
    minima lowered where smaller. Returns the running (max min_sq, first index) updated with them."""
    for t in range(count):
        i = cand[lo + t]
        exact = exact_sq(x[i], c)
        if exact < min_sq[i]:
            min_sq[i] = exact
            thr[i] = threshold(exact, err[i], scale, gamma)
            assign[i] = pick
        m = min_sq[i]
        if m > best or (m == best and i < best_i):
            best, best_i = m, i
    return best, best_i


@njit(fastmath=APPROX, inline="always", cache=True)
def _approx_sq(h, cs, i):
    """Squared distance of fp16 row ``i`` to the pick ``cs``, accumulated in fp32 (inlined into the scans)."""
    acc = np.float32(0.0)
    for k in range(h.shape[1]):
        diff = _half_to_float(h[i, k]) - cs[k]
        acc += diff * diff
    return acc


@njit(fastmath=APPROX, cache=True)
def _scan(h, cs, min_sq, thr, cand, lo, hi):
    """One chunk of one pick, every row read: (max min_sq, its first index, points listed for ``_settle``).

    The streamed loop computes each approximate distance and lists (in ``cand[lo:]``) the points
    whose exact distance could be below their minimum; the others' minima give the running maximum.
    The caller hands the listed points to ``_settle`` (called from here, it would inherit the fast-math flags)."""
    best, best_i, count = np.float32(-1.0), lo, 0
    for i in range(lo, hi):
        need = _approx_sq(h, cs, i) < thr[i]
        cand[lo + count] = i
        count += need
        kept = np.float32(-1.0) if need else min_sq[i]
        if kept > best:
            best, best_i = kept, i
    return best, best_i, count


@njit(fastmath=APPROX, cache=True)
def _scan_pruned(h, cs, min_sq, thr, assign, cc, cand, lo, hi, gamma):
    """One chunk of one pick with pruning: (max min_sq, its first index, rows read, points listed for ``_settle``).

    A sweep of the minima lists the points the triangle inequality cannot rule out (into ``cand[lo:]``)
    and keeps the maximum of the others; only the listed rows are read, and those still in doubt after
    the approximate distance are listed again (in place)."""
    limit = np.float32(4.0 * (1.0 + 5.0 * gamma))  # d(c, c_a)^2 > 4 m(x): x cannot move (slack: rounding of cc, m, the product)
    best, best_i, count = np.float32(-1.0), lo, 0
    for i in range(lo, hi):
        m = min_sq[i]
        need = cc[assign[i]] <= limit * m
        cand[lo + count] = i
        count += need
        kept = np.float32(-1.0) if need else m
        if kept > best:
            best, best_i = kept, i
    doubt = 0
    for t in range(count):
        if t + PREFETCH_AHEAD < count:
            _prefetch_row(h, cand[lo + t + PREFETCH_AHEAD])
        i = cand[lo + t]
        need = _approx_sq(h, cs, i) < thr[i]
        cand[lo + doubt] = i
        doubt += need
        kept = np.float32(-1.0) if need else min_sq[i]
        if kept > best or (kept == best and i < best_i):
            best, best_i = kept, i
    return best, best_i, count, doubt


@njit(cache=True)
def _bounds(n: int, parts: int, p: int) -> tuple[int, int]:
    step = (n + parts - 1) // parts
    return min(n, p * step), min(n, (p + 1) * step)


@njit(fastmath=APPROX, cache=True)
def _center_distances(centers: np.ndarray, c: np.ndarray, cc: np.ndarray, lo: int, hi: int) -> None:
    """cc[a] = d(c, centers[a])^2 for a in lo..hi-1 (relative error <= gamma)."""
    for a in range(lo, hi):
        acc = np.float32(0.0)
        for k in range(centers.shape[1]):
            diff = centers[a, k] - c[k]
            acc += diff * diff
        cc[a] = acc


@njit(parallel=True, cache=True)
def greedy_picks(x, h, mean, scale, min_sq, thr, err, assign, centers, cc, cand, picks, start, stop, prune, gamma, parts):
    """Picks ``start``..``stop - 1`` (``picks[start]`` already holds the arg-max of ``min_sq``).

    Returns (rows read, exact distances computed).

    Each pick: its scaled center ``cs``, with ``prune`` its distances to the earlier picks, then one
    parallel pass over ``parts`` chunks of points whose chunk maxima give the next pick (ties: the
    first index, as the chunks are in order).
    """
    n, d = x.shape
    best = np.empty(parts, np.float32)
    best_i = np.empty(parts, np.int64)
    read = np.zeros(parts, np.int64)
    exact = np.zeros(parts, np.int64)
    cs = np.empty(d, np.float32)
    rows = exact_total = 0
    for j in range(start, stop):
        c = x[picks[j]]
        for k in range(d):
            centers[j, k] = c[k]  # the picks' rows, contiguous: the pruning test streams them
            cs[k] = scale * (c[k] - mean[k])
        if prune:
            for p in prange(parts):
                lo, hi = _bounds(j, parts, p)
                _center_distances(centers, c, cc, lo, hi)
        for p in prange(parts):
            lo, hi = _bounds(n, parts, p)
            if prune:
                top, top_i, read[p], exact[p] = _scan_pruned(h, cs, min_sq, thr, assign, cc, cand, lo, hi, gamma)
            else:
                top, top_i, exact[p] = _scan(h, cs, min_sq, thr, cand, lo, hi)
                read[p] = hi - lo
            best[p], best_i[p] = _settle(x, c, min_sq, thr, err, assign, cand, lo, exact[p], j, scale, gamma, top, top_i)
        top = 0
        for p in range(1, parts):
            if best[p] > best[top]:
                top = p
        if j + 1 < picks.shape[0]:
            picks[j + 1] = best_i[top]
        rows += read.sum()
        exact_total += exact.sum()
    return rows, exact_total


def threads_for(row_bytes: int) -> int:
    """Threads for a pass over ``row_bytes``: all of numba's, or one when the pass is too short to repay the
    fork and join (which, on a busy machine, waits for every thread to be scheduled)."""
    return numba.get_num_threads() if row_bytes >= PARALLEL_MIN_BYTES else 1
