"""Exact threshold-free binary metrics from one sort and cumulative sums."""

from __future__ import annotations

import numpy as np


def binary_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (false positives, true positives) at each distinct score, highest score first."""
    scores = np.asarray(scores)
    scores = (scores if scores.dtype in (np.float32, np.float64) else scores.astype(np.float64)).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf")
    order = np.argsort(scores)[::-1]  # highest first; tied scores are merged below
    scores, labels = scores[order], labels[order]
    last_of_run = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), scores.size - 1]
    tps = np.cumsum(labels)[last_of_run]
    fps = (last_of_run + 1) - tps
    return fps, tps


def _check_both(labels: np.ndarray) -> bool:
    labels = np.asarray(labels).astype(bool)
    return bool(labels.any() and (~labels).any())


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None when only one class is present."""
    if not _check_both(labels):
        return None
    fps, tps = binary_curve(scores, labels)
    fpr, tpr = np.r_[0, fps] / fps[-1], np.r_[0, tps] / tps[-1]
    return float(np.trapezoid(tpr, fpr))


def f1_max(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Best F1 over all thresholds; None when there are no positives."""
    labels = np.asarray(labels).astype(bool)
    if not labels.any():
        return None
    fps, tps = binary_curve(scores, labels)
    precision, recall = tps / (tps + fps), tps / tps[-1]
    f1 = np.where(tps > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return float(f1.max())
