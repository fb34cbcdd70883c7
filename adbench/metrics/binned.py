"""Threshold metrics from per-bin counts of positives and negatives, vectorised over leading axes.

Counts are ``(..., K)`` arrays over K score bins in ascending score order; the threshold at bin k
calls every bin >= k positive. With one bin per distinct score the metrics are exact (that is how
:mod:`.classification` computes them, ties merged as scikit-learn does); with a fixed grid of bins
they are binned: pairs within a bin count half for AUROC, and AP / F1-max see thresholds at bin
edges only. Leading axes are e.g. bootstrap resamples; a metric undefined on a row is NaN there.
"""

from __future__ import annotations

import numpy as np


def above(counts: np.ndarray) -> np.ndarray:
    """Counts in bins >= k, for every k (reverse cumulative sum over the last axis)."""
    return np.cumsum(counts[..., ::-1], axis=-1)[..., ::-1]


def _both_classes(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p, n = pos.sum(-1), neg.sum(-1)
    return p, n, (p > 0) & (n > 0)


def auroc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC: P(positive > negative) + P(tie) / 2 (= the trapezoidal ROC area)."""
    p, n, ok = _both_classes(pos, neg)
    below = np.cumsum(neg, axis=-1) - neg
    wins = (pos * (below + 0.5 * neg)).sum(-1)
    return np.where(ok, wins / np.where(ok, p * n, 1), np.nan)


def average_precision(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AP = sum over thresholds of recall gain x precision (scikit-learn's step definition).

    A bin is one threshold: its pixels count as tied, exactly as ``average_precision_score`` treats tied
    scores, so with one bin per distinct score this is scikit-learn's AP. (Interpolating within a bin, as
    for continuous scores, is biased upwards when a bin holds one tied score: 0.49 against 0.45 exact on
    maps rounded to 1/20.)
    """
    p, _, ok = _both_classes(pos, neg)
    tp, fp = above(pos), above(neg)
    precision = np.divide(tp, tp + fp, out=np.zeros(tp.shape), where=tp + fp > 0)
    return np.where(ok, (pos * precision).sum(-1) / np.where(ok, p, 1), np.nan)


def f1_max(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Best F1 = 2 TP / (TP + FP + P) over thresholds."""
    p, _, ok = _both_classes(pos, neg)
    tp, fp = above(pos), above(neg)
    f1 = (2 * tp / np.maximum(tp + fp + p[..., None], 1)).max(-1)
    return np.where(ok, f1, np.nan)


def tnr_at_tpr(pos: np.ndarray, neg: np.ndarray, tpr: float = 0.95) -> np.ndarray:
    """True-negative rate at the highest threshold whose true-positive rate is at least ``tpr`` (TNR@95%TPR: the share
    of normal images passed when 95% of the anomalous ones are caught); a bin is one threshold, as for the others."""
    p, n, ok = _both_classes(pos, neg)
    reached = above(pos) / np.where(ok, p, 1)[..., None] >= tpr  # true at the lowest threshold; falls as it rises
    tnr = 1 - above(neg) / np.where(ok, n, 1)[..., None]  # rises with the threshold
    return np.where(ok, np.where(reached, tnr, -np.inf).max(-1), np.nan)


def normalised_area(fpr: np.ndarray, pro: np.ndarray, limit: float) -> np.ndarray:
    """Trapezoid area under ``pro(fpr)`` from 0 to ``limit`` (interpolated at ``limit``), divided by ``limit``.

    ``fpr`` / ``pro``: ``(..., M)`` curves with ``fpr`` non-decreasing along the last axis and reaching ``limit``.
    """
    x0, x1, y0, y1 = fpr[..., :-1], fpr[..., 1:], pro[..., :-1], pro[..., 1:]
    crosses = (x0 < limit) & (x1 > limit)
    t = np.divide(limit - x0, x1 - x0, out=np.zeros(x0.shape), where=crosses)
    y1 = np.where(crosses, y0 + t * (y1 - y0), y1)
    x1 = np.minimum(x1, limit)
    width = np.where(x0 < limit, x1 - x0, 0.0)
    return (width * (y0 + y1) / 2).sum(-1) / limit


def aupro(normal: np.ndarray, region_coverage: np.ndarray, n_regions: np.ndarray, limit: float = 0.3) -> np.ndarray:
    """AUPRO up to FPR ``limit`` from binned pixel counts.

    ``normal``: normal-pixel counts per bin; ``region_coverage``: summed over defect regions, the
    fraction of each region's pixels in bins >= k; ``n_regions``: their number (``(...,)``).
    """
    total = normal.sum(-1)
    ok = (total > 0) & (n_regions > 0)
    fpr = above(normal) / np.where(ok, total, 1)[..., None]
    pro = region_coverage / np.where(ok, n_regions, 1)[..., None]
    zero = np.zeros(fpr.shape[:-1] + (1,))
    # from the highest threshold down, starting at (0, 0)
    area = normalised_area(np.concatenate([zero, fpr[..., ::-1]], -1), np.concatenate([zero, pro[..., ::-1]], -1), limit)
    return np.where(ok, area, np.nan)
