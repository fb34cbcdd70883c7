"""Paired comparison of two methods on the same test images, from their per-image tables.

The difference a - b of a metric gets a paired stratified bootstrap interval: every resample draws the
same images for both methods (:class:`.bootstrap.StratifiedBootstrap`), so what the images share
cancels. The p-value is DeLong's paired test for image AUROC and, for the other metrics, the bootstrap
one: twice the smaller fraction of resampled differences on either side of 0 (with the +1 correction),
i.e. the level at which the percentile interval would just reach 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError
from .bootstrap import RESAMPLES, StratifiedBootstrap
from .delong import paired_test
from .per_image import has_pixels
from .registry import METRICS, PIXEL_METRICS
from .weighted import WeightedMetrics, as_value, table_metrics


def aligned(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both tables in one image order (by path); DataError unless they hold the same images with the same labels."""
    only_a, only_b = set(a["path"]) - set(b["path"]), set(b["path"]) - set(a["path"])
    if only_a or only_b or len(a) != len(b) or a["path"].duplicated().any():
        example = sorted(only_a or only_b)[:3]
        raise DataError(f"per-image tables cover different test images ({len(a)} vs {len(b)} rows; e.g. {example}): a paired comparison needs the same ones")
    reordered = b.set_index("path").loc[a["path"]].reset_index()
    reordered.attrs = dict(b.attrs)
    b = reordered
    if not np.array_equal(a["label"].to_numpy(), b["label"].to_numpy()):
        raise DataError("per-image tables label the same images differently: a paired comparison needs the same test set")
    return a, b


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value of difference = 0 from the resampled differences."""
    below, above = np.sum(differences <= 0), np.sum(differences >= 0)
    return float(min(1.0, 2 * (1 + min(below, above)) / (differences.size + 1)))


def paired(a: pd.DataFrame, b: pd.DataFrame, metric: str, resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Metric of method a minus method b on the same test images (tables from :func:`.per_image.read_per_image`).

    Returns {metric, difference, ci95, p_value, test, n_images}; difference, ci95 and p_value are None
    (with ``reason``) when the metric is undefined on this test set or either table lacks pixel columns.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    a, b = aligned(a, b)
    test = "DeLong" if metric == "image_auroc" else "paired bootstrap"
    out: dict[str, Any] = {"metric": metric, "difference": None, "ci95": None, "p_value": None, "test": test, "n_images": len(a)}
    if metric in PIXEL_METRICS and not (has_pixels(a) and has_pixels(b)):
        return {**out, "reason": "a per-image table has no pixel columns"}
    point_a, point_b = table_metrics(a, (metric,))[metric], table_metrics(b, (metric,))[metric]
    if point_a is None or point_b is None:
        return {**out, "reason": "metric undefined on this test set"}
    bootstrap = StratifiedBootstrap(resamples, seed, level)
    weights = bootstrap.weights(a["label"].to_numpy())  # the same resampled images for both methods
    differences = WeightedMetrics(a)(weights, (metric,))[metric] - WeightedMetrics(b)(weights, (metric,))[metric]
    if metric == "image_auroc":
        p_value = as_value(paired_test(a["score"].to_numpy(), b["score"].to_numpy(), a["label"].to_numpy())["p_value"])
    else:
        p_value = bootstrap_p_value(differences[~np.isnan(differences)])
    return {**out, "difference": point_a - point_b, "ci95": bootstrap.percentiles(differences), "p_value": p_value}
