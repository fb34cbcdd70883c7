"""Every metric a run record holds, defined once: its name (the record key and leaderboard column), its label
in tables and plots, its level, its direction and how it is computed. The suite (:mod:`.suite`), the
bootstrap (:mod:`.weighted`, :mod:`.intervals`) and every table of :mod:`adbench.results` iterate this.

Adding a metric takes its function, one entry in :data:`REGISTRY` and its test: image and pixel metrics are
functions of the positives and negatives counted per ascending score bin (:mod:`.binned`), which gives the
exact value from distinct scores and the resampled one from a per-image table alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np

from . import binned

Level = Literal["image", "pixel", "region"]


@dataclass(frozen=True)
class Metric:
    """One metric. ``level``: image (image scores against image labels), pixel (map pixels against mask pixels) or
    region (per defect region of the masks; needs maps and masks like pixel metrics)."""

    name: str
    label: str
    level: Level
    # (positives, negatives) per ascending score bin, (..., K) each → the value (..., ), NaN where undefined; None for a
    # region metric, computed from the regions themselves (AUPRO: :func:`.aupro.aupro`, binned :func:`.binned.aupro`)
    from_counts: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
    higher_is_better: bool = True
    headline: bool = False  # its own table in LEADERBOARD.md (with ties and ranks), robustness and multi-class tables
    # whose images a proportion-type bound counts when every bootstrap resample is equal (:func:`.intervals.wilson`)
    counts: Literal["anomalous", "normal"] = "anomalous"


REGISTRY: tuple[Metric, ...] = (
    Metric("image_auroc", "I-AUROC", "image", binned.auroc, headline=True),
    Metric("image_ap", "I-AP", "image", binned.average_precision),
    Metric("image_f1_max", "I-F1max", "image", binned.f1_max),
    Metric("image_tnr_at_95_tpr", "I-TNR@95%TPR", "image", partial(binned.tnr_at_tpr, tpr=0.95), headline=True,
           counts="normal"),
    Metric("pixel_auroc", "P-AUROC", "pixel", binned.auroc, headline=True),
    Metric("pixel_ap", "P-AP", "pixel", binned.average_precision),
    Metric("pixel_f1_max", "P-F1max", "pixel", binned.f1_max),
    Metric("aupro", "AUPRO", "region", None, headline=True),  # AUPRO@30% FPR (Bergmann et al. 2021, IJCV 129:1038)
)

BY_NAME = {m.name: m for m in REGISTRY}
METRICS = tuple(BY_NAME)  # the record keys, in record and leaderboard-column order
IMAGE_METRICS = tuple(m.name for m in REGISTRY if m.level == "image")
PIXEL_METRICS = tuple(m.name for m in REGISTRY if m.level != "image")  # need anomaly maps and pixel masks
HEADLINE = tuple(m for m in REGISTRY if m.headline)
LABELS = {m.name: m.label for m in REGISTRY}


def from_counts(level: Level, pos: np.ndarray, neg: np.ndarray, metrics: tuple[str, ...] = METRICS) -> dict[str, np.ndarray]:
    """Each of ``metrics`` of ``level`` that is a function of per-bin counts, from ``pos`` / ``neg`` (:mod:`.binned`)."""
    return {m.name: m.from_counts(pos, neg) for m in REGISTRY if m.level == level and m.from_counts is not None and m.name in metrics}
