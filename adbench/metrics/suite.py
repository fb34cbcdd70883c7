"""What a run's record gets from its scores: every metric (exact), the reason each undefined one is
null, the per-defect-type breakdown, 95% intervals (:mod:`.intervals`), and the per-image table they come from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.samples import Sample
from ..scores import Scored
from . import intervals as ci
from .aupro import aupro
from .classification import auroc, distinct_counts
from .per_image import per_image_table, table_path, write_per_image
from .registry import IMAGE_METRICS, METRICS, PIXEL_METRICS, from_counts
from .weighted import as_value

NO_MASKS = "the dataset has no pixel masks"
NO_MAPS = "the method gives no anomaly maps"


def _exact(level: str, scores: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """The registry's metrics of ``level`` computed from counts, one bin per distinct score (one sort for all)."""
    return {m: as_value(v) for m, v in from_counts(level, *distinct_counts(scores, labels)).items()}


def evaluate(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None = None,
    maps: np.ndarray | None = None,
    pro_limit: float = 0.3,
) -> dict[str, float | None]:
    """Every metric of the registry, exact: image metrics; pixel metrics and AUPRO when both masks and maps exist; None where undefined."""
    result = _exact("image", scores, labels)
    if masks is not None and maps is not None:
        result.update(_exact("pixel", maps, masks), aupro=aupro(maps, masks, pro_limit))
    return {m: result.get(m) for m in METRICS}


def undefined_reasons(metrics: dict[str, float | None], labels: np.ndarray, masks: np.ndarray | None, pixel_absent: str | None) -> dict[str, str]:
    """{metric: why it is None} for every None metric."""
    labels = np.asarray(labels).astype(bool)
    image = "the test set has no normal image" if labels.all() else "the test set has no anomalous image" if not labels.any() else None
    pixel = pixel_absent
    if pixel is None and masks is not None:
        pixel = "the test masks have no defect pixel" if not masks.any() else "the test masks have no normal pixel" if masks.all() else None
    reasons = {**dict.fromkeys(IMAGE_METRICS, image), **dict.fromkeys(PIXEL_METRICS, pixel)}
    return {m: reasons[m] or "undefined on this test set" for m in METRICS if metrics.get(m) is None}


def per_defect(labels: np.ndarray, defects: list[str], scores: np.ndarray, masks: np.ndarray | None = None, maps: np.ndarray | None = None,
               pro_limit: float = 0.3) -> dict[str, dict[str, Any]]:
    """Each defect type against the good images: {type: {n, image_auroc, aupro}} (exact; AUPRO None without maps and masks)."""
    labels, defects = np.asarray(labels).astype(bool), np.asarray(defects)
    out = {}
    for defect in sorted(set(defects[labels])):
        chosen = ~labels | (defects == defect)
        pixel = masks is not None and maps is not None
        out[str(defect)] = {
            "n": int((labels & (defects == defect)).sum()),
            "image_auroc": auroc(scores[chosen], labels[chosen]),
            "aupro": aupro(maps[chosen], masks[chosen], pro_limit) if pixel else None,
        }
    return out


@dataclass
class Assessment:
    """A run's record fields (metrics, metrics_undefined, pixel_metrics, per_defect, ci95, bootstrap) and its per-image table."""

    fields: dict[str, Any]
    table: pd.DataFrame

    def write_beside(self, record_path: str | Path) -> str:
        """Write the table beside the record; returns its name relative to the record's folder (the record's ``per_image``)."""
        return write_per_image(table_path(record_path), self.table).name


def assess(
    labels: np.ndarray,
    scores: np.ndarray,
    paths: list[str],
    defects: list[str],
    masks: np.ndarray | None = None,
    maps: np.ndarray | None = None,
    pixel_absent: str | None = None,
    seed: int = 0,
    pro_limit: float = 0.3,
) -> Assessment:
    """Everything a record says about a run's test scores; ``pixel_absent``: why there are no pixel metrics (masks or maps None).
    ``seed``: the intervals' bootstrap resampling (:func:`.intervals.confidence_intervals`)."""
    labels = np.asarray(labels).astype(bool)
    pixel = masks is not None and maps is not None
    if not pixel and pixel_absent is None:
        pixel_absent = NO_MASKS if masks is None else NO_MAPS
    metrics = evaluate(labels, scores, masks, maps, pro_limit)
    table = per_image_table(paths, labels, defects, scores, maps, masks, pro_limit)
    intervals = ci.confidence_intervals(table, seed=seed)
    fields = {
        "metrics": metrics,
        "metrics_undefined": undefined_reasons(metrics, labels, masks if pixel else None, None if pixel else pixel_absent),
        "pixel_metrics": "computed" if pixel else f"not applicable ({pixel_absent})",
        "per_defect": per_defect(labels, defects, scores, masks, maps, pro_limit),
        "ci95": {m: (intervals[m] if metrics[m] is not None else None) for m in METRICS},
        "bootstrap": ci.describe(seed=seed),
    }
    return Assessment(fields, table)


def assess_scored(scored: Scored, samples: list[Sample], base: Path, has_masks: bool, pixel_level: bool, seed: int) -> Assessment:
    """:func:`assess` for a scoring pass over ``samples`` (matched by path; paths in the table relative to ``base``)."""
    by_path = {str(s.image): s for s in samples}
    chosen = [by_path[p] for p in scored.paths]
    maps = scored.maps if pixel_level else None
    return assess(
        scored.labels, scored.scores, [s.image.relative_to(base).as_posix() for s in chosen], [s.defect for s in chosen],
        masks=scored.masks if has_masks else None, maps=maps,
        pixel_absent=NO_MASKS if not has_masks else NO_MAPS if maps is None else None,
        seed=seed,
    )
