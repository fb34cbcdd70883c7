"""DeLong, DeLong & Clarke-Pearson (1988): the covariance of correlated AUROCs from their structural
components, computed from midranks (Sun & Xu 2014, O(n log n)); the analytic AUROC interval and the
paired test of two scorings of the same images.

Structural components: for each anomalous image i, V10_i = the fraction of normal images it outscores
(ties half); for each normal image j, V01_j = the fraction of anomalous images that outscore it. AUROC
is their mean; Cov = S10 / m + S01 / n with S the sample covariances (ddof 1) over the m anomalous and
n normal images.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def delong(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs of ``k`` scorings of the same images (``scores`` ``(k, N)`` or ``(N,)``) and their ``(k, k)`` covariance.

    Needs at least two images of each class (NaN covariance otherwise).
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    labels = np.asarray(labels).astype(bool)
    x, y = scores[:, labels], scores[:, ~labels]
    m, n = x.shape[1], y.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong needs anomalous and normal images")
    pooled = stats.rankdata(np.concatenate([x, y], axis=1), axis=1)
    v10 = (pooled[:, :m] - stats.rankdata(x, axis=1)) / n  # normal images below each anomalous one
    v01 = 1.0 - (pooled[:, m:] - stats.rankdata(y, axis=1)) / m  # anomalous images above each normal one
    auc = v10.mean(1)
    if m < 2 or n < 2:
        return auc, np.full((len(auc), len(auc)), np.nan)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return auc, cov


def auroc_interval(scores: np.ndarray, labels: np.ndarray, level: float = 0.95) -> tuple[float, list[float]]:
    """(AUROC, [low, high]): the normal-approximation interval AUROC ± z sqrt(Var), clipped to [0, 1]."""
    auc, cov = delong(scores, labels)
    half = stats.norm.ppf((1 + level) / 2) * np.sqrt(cov[0, 0])
    return float(auc[0]), [float(max(auc[0] - half, 0.0)), float(min(auc[0] + half, 1.0))]


def paired_test(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """DeLong's test of AUROC(a) = AUROC(b) on the same images: difference a - b, its standard error, z, two-sided p."""
    auc, cov = delong(np.stack([scores_a, scores_b]), labels)
    difference = float(auc[0] - auc[1])
    variance = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if np.isnan(variance):
        return {"difference": difference, "std_error": variance, "z": variance, "p_value": variance}
    if variance <= 0:  # constant structural components (e.g. identical rankings): p is 1 for equal AUROCs, its limit 0 otherwise
        return {"difference": difference, "std_error": 0.0, "z": float("nan"), "p_value": 1.0 if difference == 0 else 0.0}
    z = difference / np.sqrt(variance)
    return {"difference": difference, "std_error": float(np.sqrt(variance)), "z": float(z), "p_value": float(2 * stats.norm.sf(abs(z)))}
