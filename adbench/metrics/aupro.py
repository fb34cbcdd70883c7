"""AUPRO: per-region overlap (PRO) integrated over false-positive rate 0..limit, divided by limit.

Exact method: connected defect regions (8-connected) of every mask; each defect pixel carries
weight 1 / (|region| * n_regions), each normal pixel 1 / n_normal. Sorting pixels by score (highest
first) and summing the weights gives PRO and FPR at every distinct threshold; only pixels above the
threshold where FPR reaches ``limit`` can matter, so just those are sorted.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


def region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-pixel PRO weights (0 for normal pixels) and the number of defect regions."""
    masks = np.asarray(masks).astype(bool)
    weights = np.zeros(masks.shape, dtype=np.float64)
    n_regions = 0
    for i, mask in enumerate(masks):
        if not mask.any():
            continue
        labelled, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
        sizes = np.bincount(labelled.ravel())
        per_pixel = np.zeros_like(sizes, dtype=np.float64)
        per_pixel[1:] = 1.0 / sizes[1:]
        weights[i] = per_pixel[labelled]
        n_regions += count
    if n_regions:
        weights /= n_regions
    return weights, n_regions


def pro_curve(maps: np.ndarray, masks: np.ndarray, limit: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at each distinct threshold down to FPR ≈ ``limit``, starting at (0, 0)."""
    maps = np.asarray(maps, dtype=np.float64).ravel()
    masks = np.asarray(masks).astype(bool)
    weights, n_regions = region_weights(masks)
    weights, masks = weights.ravel(), masks.ravel()
    normal_scores = maps[~masks]
    n_normal = normal_scores.size
    if n_regions == 0 or n_normal == 0:
        raise ValueError("AUPRO needs both defect regions and normal pixels")
    if limit < 1.0:  # the score at which FPR first exceeds limit bounds what is needed
        k = min(n_normal - 1, int(np.floor(limit * n_normal)))
        cut = np.partition(normal_scores, n_normal - 1 - k)[n_normal - 1 - k]
        keep = maps >= cut
        maps, masks, weights = maps[keep], masks[keep], weights[keep]
    order = np.argsort(-maps, kind="stable")
    maps, masks, weights = maps[order], masks[order], weights[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(maps)), maps.size - 1]
    fpr = np.cumsum(~masks / n_normal)[last_of_run]
    pro = np.cumsum(weights)[last_of_run]
    return np.r_[0.0, fpr], np.r_[0.0, pro]


def integrate_until(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid integral of y(x) from 0 to ``limit``, interpolating y at ``limit``."""
    inside = x <= limit
    xs, ys = x[inside], y[inside]
    if xs[-1] < limit and inside.sum() < x.size:
        j = int(inside.sum())
        t = (limit - x[j - 1]) / (x[j] - x[j - 1])
        xs, ys = np.r_[xs, limit], np.r_[ys, y[j - 1] + t * (y[j] - y[j - 1])]
    return float(np.trapezoid(ys, xs))


def aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float | None:
    """Normalised area under the PRO curve up to FPR ``limit``; None without defect regions."""
    masks = np.asarray(masks).astype(bool)
    if not masks.any() or masks.all():
        return None
    fpr, pro = pro_curve(maps, masks, limit)
    return integrate_until(fpr, pro, limit) / limit
