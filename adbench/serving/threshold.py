"""The decision threshold of a saved model, chosen on held-out normal training images only.

With ``save_model`` the run holds out a fraction ``threshold.holdout`` (default 0.2, at least one
image, drawn with the run's seed) of the normal training images, fits on the rest, and scores the
held-out images. The image threshold is the ``threshold.quantile`` (default 1.0, the maximum) of their
image scores: every held-out normal image scores at or below it. The pixel threshold (outlined in the
overlays) is the same quantile of their per-image maximum map values. A score strictly above the
threshold is called anomalous. Fewer than ``FEW_HELD_OUT`` held-out images make a noisy threshold (the
maximum of two scores flags many good images): saving and predicting with one warn; ``adbench-predict
threshold=VALUE`` overrides it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..methods import AnomalyDetector, Prediction
from ..methods.scoring import score_batches

FEW_HELD_OUT = 10  # fewer held-out images than this: the threshold is noisy, a warning says so


def calibrate_threshold(method: AnomalyDetector, batches: Iterable[dict], quantile: float) -> dict[str, Any]:
    """Thresholds from scores of held-out normal images (see the module docstring)."""
    if not 0.0 < quantile <= 1.0:
        raise ConfigError(f"threshold.quantile must be in (0, 1], got {quantile}")
    peaks, medians = [], []

    def map_stats(batch: dict, prediction: Prediction) -> None:
        if prediction.maps is not None:
            flat = prediction.maps.reshape(len(prediction.maps), -1)
            peaks.append(flat.max(1))
            medians.append(np.median(flat, 1))

    scored = score_batches(method, batches, "threshold", keep_maps=False, on_batch=map_stats)
    scores_all, paths = scored.scores, scored.paths
    result: dict[str, Any] = {
        "rule": f"quantile {quantile} of the scores of {len(paths)} held-out normal training images",
        "quantile": quantile,
        "image": float(np.quantile(scores_all, quantile)),
        "pixel": float(np.quantile(np.concatenate(peaks), quantile)) if peaks else None,
        "pixel_floor": float(np.median(np.concatenate(medians))) if medians else None,
        "held_out": [Path(p).name for p in paths],
        "held_out_scores": [float(s) for s in scores_all],
    }
    return result
