"""One call that computes every metric of a run; metrics that do not apply are None."""

from __future__ import annotations

import numpy as np

from .aupro import aupro
from .classification import auroc, f1_max


def evaluate(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None = None,
    maps: np.ndarray | None = None,
    pro_limit: float = 0.3,
) -> dict[str, float | None]:
    """Image AUROC / F1-max always; pixel AUROC / F1-max / AUPRO when both masks and maps exist."""
    result: dict[str, float | None] = {"image_auroc": auroc(scores, labels), "image_f1_max": f1_max(scores, labels)}
    pixel = masks is not None and maps is not None
    result["pixel_auroc"] = auroc(maps, masks) if pixel else None
    result["pixel_f1_max"] = f1_max(maps, masks) if pixel else None
    result["aupro"] = aupro(maps, masks, pro_limit) if pixel else None
    return result
