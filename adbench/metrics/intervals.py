"""95% intervals for every metric of a per-image table, chosen to keep their coverage where anomaly detection
benchmarks sit: AUROC 0.98-1.0 with 20-100 test images per class (coverage by simulation:
benchmarks/bench_statistics.py, benchmarks/results/statistics.json).

- Image AUROC: a score-type interval for the Mann-Whitney AUROC, built as Newcombe (2006, "Confidence
  intervals for an effect size measure based on the Mann-Whitney statistic. Part 2", Stat Med 25:559-573)
  builds his: the bounds are the θ solving (AUROC - θ)² = z² r V(θ), with V(θ) the variance of the
  estimator at θ. Newcombe takes V from Hanley & McNeil's (1982, Radiology 143:29) negative-exponential
  model; here V is the same formula under the equal-variance binormal model (the standard ROC model; Metz
  1986), because the exponential one over-covers near the ceiling (0.99-1.0 at AUROC 0.995 in the
  simulation). r = max(1, DeLong variance / V(AUROC)) lets the data widen it where they vary more than
  the model (anomalous scores narrower than normal ones: coverage 0.89-0.97 in the simulation instead of
  0.81-0.95 without). Evaluated at the bound, like Wilson's interval, it gives a perfect separation
  [low, 1] with low < 1 (20 normal vs 63 anomalous images: [0.95, 1]), never zero width. The percentile
  bootstrap it replaces covered a true 0.9945 in 71% of repetitions at that size.
- Every other metric: over test images stratified by class (pixel metrics resample or leave out whole images
  with all their pixels and regions), (a) for the image metrics (AP, F1-max, TNR at 95% TPR), and the union of
  (a) and (b) for the pixel and region ones (AUROC, AP, F1-max, AUPRO):
  (a) the bias-corrected and accelerated (BCa) bootstrap (Efron 1987, JASA 82:171; Efron & Tibshirani 1993,
  ch. 14; :class:`.bootstrap.StratifiedBootstrap`, acceleration from the leave-one-image-out jackknife) at the
  level widened as Hesterberg's (2015, "What teachers should know about the bootstrap", Am Stat 69:371,
  sec. 4.3) expanded percentile interval is: its normal quantile z replaced by sqrt(n/(n-1)) t_{n-1}, n the
  smaller class (the bootstrap's spread is that of n - 1 images, not n);
  (b) a jackknife t interval on the logit scale: logit(estimate) ± t_{n-1} × the stratified leave-one-image-out
  jackknife standard error (Efron & Stein 1981: the jackknife variance errs on the large side), mapped back.
  Not for image metrics: a step function of few images, their leave-one-out values jump towards 1 (AP 0.9935
  → 0.99999) and the logit turns that into an interval reaching 0.18.
  With 20-26 normal images plain BCa covered 0.88-0.93 near the ceiling (pixel AUROC 0.99-0.995), this
  0.94-0.98 (benchmarks/results/statistics.json has every cell).
- When every resample gives the same value (e.g. AP = 1 on a perfect separation) or BCa collapses to a
  point, the Wilson (1927) score interval of that value as a proportion over the anomalous images (the
  normal ones for TNR at 95% TPR): at 1 this is the exact one-sided bound of "no image out of order"
  (m / (m + z²)).

Several seeds of one configuration on the same test images (:func:`pooled_intervals`): the interval of the
seed mean over test images (the same resampled images for every seed), widened in quadrature by
z·s/√S, s the standard deviation over the S seeds (the seeds' and the images' errors are independent).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from .bootstrap import RESAMPLES, StratifiedBootstrap
from .delong import delong
from .registry import BY_NAME
from .weighted import METRICS, WeightedMetrics

LEVEL = 0.95
JACKKNIFE_JOINED = frozenset(m for m in METRICS if BY_NAME[m].level != "image")  # pixel and region metrics (docstring)
METHODS = {
    "image_auroc": "score interval (Newcombe 2006) with binormal variance, DeLong-inflated",
    **{m: "expanded BCa bootstrap (Hesterberg 2015) ∪ logit jackknife-t, over test images" if m in JACKKNIFE_JOINED
       else "expanded BCa bootstrap (Hesterberg 2015) over test images" for m in METRICS if m != "image_auroc"},
}
FALLBACK = "Wilson score interval over the anomalous images (normal ones for TNR at 95% TPR) when every resample is equal"


def binormal_variance(theta: float | np.ndarray, n_normal: int, n_anomalous: int) -> float | np.ndarray:
    """Var(AUROC) at θ under the equal-variance binormal model: Hanley & McNeil's (1982, eq. 1) exact form
    [θ(1-θ) + (m-1)(Q1-θ²) + (n-1)(Q2-θ²)] / mn with Q1 = Q2 = P(X1 > Y, X2 > Y) = Φ₂(d, d; ½), d = Φ⁻¹(θ)
    (= Φ(d) - 2 T(d, 1/√3), Owen's T)."""
    theta = np.clip(theta, 1e-15, 1 - 1e-15)
    q = theta - 2 * special.owens_t(stats.norm.ppf(theta), 1 / np.sqrt(3))
    return (theta * (1 - theta) + (n_normal + n_anomalous - 2) * (q - theta**2)) / (n_normal * n_anomalous)


def score_auroc(auroc: float, n_normal: int, n_anomalous: int, level: float = LEVEL, inflation: float = 1.0,
                extra_variance: float = 0.0) -> list[float]:
    """The θ where (AUROC - θ)² = z² (``inflation`` V(θ) + ``extra_variance``) below and above the estimate
    (Newcombe 2006's score construction), V the binormal variance (:func:`binormal_variance`)."""
    z2 = stats.norm.ppf((1 + level) / 2) ** 2

    def gap(theta: float) -> float:
        return float((auroc - theta) ** 2 - z2 * (inflation * binormal_variance(theta, n_normal, n_anomalous) + extra_variance))

    inner = min(max(auroc, 1e-12), 1 - 1e-12)  # gap < 0 here (inside the interval)
    low = 0.0 if gap(0.0) <= 0 else optimize.brentq(gap, 0.0, inner, xtol=1e-12)
    high = 1.0 if gap(1.0) <= 0 else optimize.brentq(gap, inner, 1.0, xtol=1e-12)
    return [float(low), float(high)]


def variance_inflation(tables: list[pd.DataFrame], auroc: float) -> float:
    """max(1, DeLong variance of the seed-mean AUROC / the binormal variance at it): the data's own spread
    where it exceeds the model's (unequal class variances, outliers); 1 at AUROC 0 or 1 (DeLong is 0 there)."""
    labels = tables[0]["label"].to_numpy().astype(bool)
    if not 0 < auroc < 1 or labels.sum() < 2 or (~labels).sum() < 2:
        return 1.0
    _, cov = delong(np.stack([t["score"].to_numpy() for t in tables]), labels)
    return float(max(1.0, cov.mean() / binormal_variance(auroc, int((~labels).sum()), int(labels.sum()))))


def wilson(value: float, n: int, level: float = LEVEL) -> list[float]:
    """Wilson's score interval for a proportion ``value`` observed on ``n`` units."""
    z = stats.norm.ppf((1 + level) / 2)
    centre = (value + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(value * (1 - value) / n + z * z / (4 * n * n))
    return [float(max(centre - half, 0.0)), float(min(centre + half, 1.0))]


def bca(estimate: float, resampled: np.ndarray, jackknife: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """The BCa interval from bootstrap values and leave-one-out jackknife values (Efron 1987); None when degenerate."""
    resampled = resampled[~np.isnan(resampled)]
    jackknife = jackknife[~np.isnan(jackknife)]
    if resampled.size < 2 or np.ptp(resampled) == 0:
        return None
    below = (np.mean(resampled < estimate) + 0.5 * np.mean(resampled == estimate)).clip(0.5 / resampled.size, 1 - 0.5 / resampled.size)
    z0 = stats.norm.ppf(below)
    spread = jackknife.mean() - jackknife
    denominator = 6 * np.sum(spread**2) ** 1.5
    acceleration = np.sum(spread**3) / denominator if denominator > 0 else 0.0
    z = stats.norm.ppf([(1 - level) / 2, (1 + level) / 2])
    shifted = z0 + z
    with np.errstate(divide="ignore", invalid="ignore"):
        adjusted = np.where(1 - acceleration * shifted > 0, stats.norm.cdf(z0 + shifted / (1 - acceleration * shifted)), np.array([0.0, 1.0]))
    low, high = np.quantile(resampled, adjusted)
    return None if high <= low else [float(low), float(high)]


def smaller_class(labels: np.ndarray) -> int:
    """Images in the smaller class (boolean ``labels``): the n of the expansion, jackknife-t and null draws' t."""
    return int(min(labels.sum(), (~labels).sum()))


def expanded_level(level: float, n: int, resamples: int = RESAMPLES) -> float:
    """The level whose normal quantile is sqrt(n/(n-1)) t_{n-1} at ``level`` (Hesterberg 2015's expansion), at most
    the widest the resamples can give (with 2 images of a class it would be 1: then the resamples' range)."""
    z = np.sqrt(n / (n - 1)) * stats.t.ppf((1 + level) / 2, n - 1) if n > 1 else stats.norm.ppf((1 + level) / 2)
    return float(min(2 * stats.norm.cdf(z) - 1, 1 - 1 / resamples))


def logit_jackknife(estimate: float, jackknife: np.ndarray, labels: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """logit(estimate) ± t_{n-1} × the stratified jackknife standard error of logit(value), mapped back; n the smaller
    class. None where the estimate or a leave-one-out value is 0 or 1 (no logit there)."""
    if not 0 < estimate < 1 or np.any(jackknife <= 0) or np.any(jackknife >= 1):
        return None
    values = special.logit(jackknife)
    variance = sum((part.size - 1) / part.size * np.sum((part - part.mean()) ** 2)
                   for part in (values[~labels], values[labels]) if part.size > 1)
    n = smaller_class(labels)
    half = stats.t.ppf((1 + level) / 2, max(n - 1, 1)) * np.sqrt(variance)
    centre = special.logit(estimate)
    return [float(special.expit(centre - half)), float(special.expit(centre + half))]


def bootstrap_interval(estimate: float, resampled: np.ndarray, jackknife: np.ndarray, labels: np.ndarray,
                       level: float = LEVEL, join_jackknife: bool = True) -> list[float] | None:
    """The expanded BCa interval, joined with the logit jackknife-t one when ``join_jackknife`` (module docstring);
    None when BCa is degenerate."""
    n = smaller_class(labels)
    found = bca(estimate, resampled, jackknife, expanded_level(level, n, resampled.size))
    jack = logit_jackknife(estimate, jackknife, labels, level) if found is not None and join_jackknife else None
    return found if jack is None else [min(found[0], jack[0]), max(found[1], jack[1])]


def _aligned(tables: list[pd.DataFrame]) -> list[pd.DataFrame]:
    """The tables in the first one's image order; ValueError unless all hold the same images with the same labels."""
    first = tables[0]
    out = [first]
    for table in tables[1:]:
        if len(table) != len(first) or set(table["path"]) != set(first["path"]):
            raise ValueError("seed tables cover different test images")
        reordered = table.set_index("path").loc[first["path"]].reset_index()
        reordered.attrs = dict(table.attrs)
        if not np.array_equal(reordered["label"].to_numpy(), first["label"].to_numpy()):
            raise ValueError("seed tables label the same images differently")
        out.append(reordered)
    return out


def pooled_intervals(tables: list[pd.DataFrame], level: float = LEVEL, seed: int = 0, resamples: int = RESAMPLES,
                     metrics: tuple[str, ...] = METRICS) -> dict[str, list[float] | None]:
    """{metric: [low, high] or None} for the mean over ``tables`` (seeds of one configuration on the same test images)."""
    tables = _aligned(list(tables))
    labels = tables[0]["label"].to_numpy().astype(bool)
    n_anomalous, n_normal = int(labels.sum()), int((~labels).sum())
    evaluators = [WeightedMetrics(t) for t in tables]
    n = len(labels)
    weights = StratifiedBootstrap(resamples, seed, level).weights(labels)
    leave_one_out = np.ones((n, n)) - np.eye(n)
    z = stats.norm.ppf((1 + level) / 2)
    point = [e(np.ones((1, n)), metrics) for e in evaluators]
    wanted = tuple(m for m in metrics if m != "image_auroc")
    resampled = [e(weights, wanted) for e in evaluators] if wanted else []  # every metric of every seed at once
    jackknife = [e(leave_one_out, wanted) for e in evaluators] if wanted else []
    out: dict[str, list[float] | None] = {}
    for metric in metrics:
        per_seed = np.array([p[metric][0] for p in point])
        if np.isnan(per_seed).any() or n_anomalous == 0 or n_normal == 0:
            out[metric] = None
            continue
        estimate = float(per_seed.mean())
        seeds = float(per_seed.std(ddof=1) / np.sqrt(len(per_seed))) if len(per_seed) > 1 else 0.0
        if metric == "image_auroc":
            out[metric] = score_auroc(estimate, n_normal, n_anomalous, level, variance_inflation(tables, estimate), seeds**2)
            continue
        low, high = (bootstrap_interval(estimate, np.mean([r[metric] for r in resampled], axis=0),
                                        np.mean([j[metric] for j in jackknife], axis=0), labels, level,
                                        join_jackknife=metric in JACKKNIFE_JOINED)
                     or wilson(estimate, n_normal if BY_NAME[metric].counts == "normal" else n_anomalous, level))
        widen = (z * seeds) ** 2
        out[metric] = [float(max(estimate - np.sqrt((estimate - low) ** 2 + widen), 0.0)),
                       float(min(estimate + np.sqrt((high - estimate) ** 2 + widen), 1.0))]
    return out


def confidence_intervals(table: pd.DataFrame, level: float = LEVEL, seed: int = 0) -> dict[str, list[float] | None]:
    """{metric: [low, high] or None (undefined on this table)} for a per-image table (columns ``label``,
    ``score`` and the pixel columns where present; :mod:`.per_image`): Newcombe for image AUROC, expanded BCa
    bootstrap over test images (``seed``) joined with a logit jackknife-t interval for the rest, never of zero width. What a record's ``ci95`` holds."""
    return pooled_intervals([table], level, seed)


def describe(level: float = LEVEL, seed: int = 0, resamples: int = RESAMPLES) -> dict[str, Any]:
    """The record's ``bootstrap`` entry: how its ``ci95`` were computed."""
    return {"resamples": resamples, "seed": seed, "level": level, "method": METHODS, "fallback": FALLBACK,
            "resampling": "stratified over test images (normal and anomalous resampled separately; pixel metrics resample "
                          "whole images, binned on the per-image table's grid)"}
