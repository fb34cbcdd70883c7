"""Exact threshold-free binary metrics: one sort, counts per distinct score, then :mod:`.binned`."""

from __future__ import annotations

import numpy as np

from . import binned


def distinct_counts(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positives, negatives) at each distinct score, in ascending score order."""
    scores = np.asarray(scores)
    scores = (scores if scores.dtype in (np.float32, np.float64) else scores.astype(np.float64)).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf")
    order = np.argsort(scores)  # ties are merged below, so their order is irrelevant
    scores, labels = scores[order], labels[order]
    starts = np.r_[0, np.flatnonzero(scores[1:] != scores[:-1]) + 1]
    pos = np.add.reduceat(labels.astype(np.float64), starts) if scores.size else np.zeros(0)
    sizes = np.diff(np.r_[starts, scores.size])
    return pos, sizes - pos


def _value(x: np.ndarray) -> float | None:
    return None if np.isnan(x) else float(x)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None when only one class is present."""
    return _value(binned.auroc(*distinct_counts(scores, labels)))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Average precision as scikit-learn defines it; None when only one class is present."""
    return _value(binned.average_precision(*distinct_counts(scores, labels)))


def f1_max(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Best F1 over all thresholds; None when only one class is present (a one-class set has no F1-max)."""
    return _value(binned.f1_max(*distinct_counts(scores, labels)))
