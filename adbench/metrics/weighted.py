"""Every metric of a per-image table as a function of image weights, vectorised over rows of weights.

A row of weights says how often each test image counts: all ones recomputes the table's metrics,
bootstrap counts give one resample per row, 0/1 picks a subset (a defect type with the good images).
Image metrics are exact (bins = distinct image scores); pixel metrics use the table's score grid, a
resampled image bringing all its pixels and defect regions (:mod:`.per_image`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import binned
from .per_image import has_pixels
from .registry import IMAGE_METRICS, METRICS, PIXEL_METRICS, from_counts

CHUNK_CELLS = 2**19  # rows x bins evaluated at once: bounds the temporaries (~4 MB each)


class WeightedMetrics:
    """Precomputed sums of a per-image table; ``__call__(weights)`` gives each metric per row of weights."""

    def __init__(self, table: pd.DataFrame):
        self.n = len(table)
        self.labels = table["label"].to_numpy().astype(bool)
        scores = table["score"].to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(scores)):
            raise ValueError("per-image scores contain NaN or inf")
        self.order = np.argsort(scores)
        ordered = scores[self.order]
        self.starts = np.r_[0, np.flatnonzero(ordered[1:] != ordered[:-1]) + 1] if self.n else np.zeros(0, int)
        self.pixel = has_pixels(table)
        self.pro_limit = float(table.attrs.get("pro_limit", 0.3))
        if self.pixel:
            self.normal = np.stack(table["normal_hist"].to_numpy()).astype(np.float64)
            bins = self.normal.shape[1]
            regions = [np.stack(r).astype(np.float64) if len(r) else np.zeros((0, bins)) for r in table["region_hists"]]
            self.defect = np.stack([r.sum(0) for r in regions])
            # per image: summed over its regions, the fraction of the region's pixels at or above each bin
            self.coverage = np.stack([(binned.above(r) / np.maximum(r.sum(1, keepdims=True), 1)).sum(0) for r in regions])
            self.n_regions = np.array([len(r) for r in regions], dtype=np.float64)

    def __call__(self, weights: np.ndarray, metrics: tuple[str, ...] = METRICS) -> dict[str, np.ndarray]:
        """``weights``: ``(rows, n)``; returns {metric: ``(rows,)``}, NaN where undefined (pixel metrics: NaN without pixel columns)."""
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        if weights.shape[1] != self.n:
            raise ValueError(f"weights cover {weights.shape[1]} images, the table has {self.n}")
        step = max(1, CHUNK_CELLS // (self.normal.shape[1] if self.pixel else max(self.n, 1)))
        parts = [self._chunk(weights[i : i + step], metrics) for i in range(0, len(weights), step)]
        return {m: np.concatenate([p[m] for p in parts]) for m in metrics}

    def _chunk(self, w: np.ndarray, metrics: tuple[str, ...]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if any(m in IMAGE_METRICS for m in metrics):
            sorted_w, sorted_labels = w[:, self.order], self.labels[self.order]
            pos = np.add.reduceat(sorted_w * sorted_labels, self.starts, axis=1)
            neg = np.add.reduceat(sorted_w * ~sorted_labels, self.starts, axis=1)
            out.update(from_counts("image", pos, neg, metrics))
        if any(m in PIXEL_METRICS for m in metrics):
            if not self.pixel:
                return {**out, **{m: np.full(len(w), np.nan) for m in metrics if m in PIXEL_METRICS}}
            neg = w @ self.normal
            out.update(from_counts("pixel", w @ self.defect, neg, metrics))
            if "aupro" in metrics:
                out["aupro"] = binned.aupro(neg, w @ self.coverage, w @ self.n_regions, self.pro_limit)
        return {m: out[m] for m in metrics}


def as_value(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def table_metrics(table: pd.DataFrame, metrics: tuple[str, ...] = METRICS) -> dict[str, float | None]:
    """A record's metrics recomputed from its per-image table alone (pixel metrics binned, see :mod:`.per_image`)."""
    values = WeightedMetrics(table)(np.ones((1, len(table))), metrics)
    return {m: as_value(v[0]) for m, v in values.items()}


def table_per_defect(table: pd.DataFrame) -> dict[str, dict[str, float | int | None]]:
    """Each defect type against the good images: its image count, image AUROC and (binned) AUPRO."""
    evaluate = WeightedMetrics(table)
    labels, defects = table["label"].to_numpy().astype(bool), table["defect"].to_numpy()
    types = sorted(set(defects[labels]))
    if not types:
        return {}
    weights = np.stack([(~labels | (defects == d)).astype(np.float64) for d in types])
    values = evaluate(weights, ("image_auroc", "aupro"))
    return {d: {"n": int(((defects == d) & labels).sum()), "image_auroc": as_value(values["image_auroc"][i]), "aupro": as_value(values["aupro"][i])}
            for i, d in enumerate(types)}
