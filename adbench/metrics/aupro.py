"""AUPRO: per-region overlap (PRO) integrated over false-positive rate 0..limit, divided by limit.

Exact method: connected defect regions (8-connected) of every mask; each defect pixel carries
weight 1 / (|region| * n_regions), each normal pixel 1 / n_normal. Sorting pixels by score (highest
first) and summing the weights gives PRO and FPR at every distinct threshold; only pixels above the
threshold where FPR reaches ``limit`` can matter, so just those are sorted.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .binned import normalised_area

EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global region ids (0 = normal) of every pixel, 8-connected per image, and each region's size."""
    masks = np.asarray(masks).astype(bool)
    labels = np.zeros(masks.shape, dtype=np.int32)
    offset = 0
    for i, mask in enumerate(masks):
        if mask.any():
            count = ndimage.label(mask, structure=EIGHT_CONNECTED, output=labels[i])
            labels[i][mask] += offset
            offset += count
    sizes = np.bincount(labels[masks], minlength=offset + 1)
    return labels, sizes


def region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-pixel PRO weights 1 / (|region| * n_regions) (0 for normal pixels), and n_regions."""
    labels, sizes = label_regions(masks)
    n_regions = len(sizes) - 1
    per_region = np.zeros(len(sizes))
    per_region[1:] = 1.0 / (sizes[1:] * max(n_regions, 1))
    return per_region[labels], n_regions


def pro_curve(maps: np.ndarray, masks: np.ndarray, limit: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at each distinct threshold down to FPR ≈ ``limit``, starting at (0, 0)."""
    scores = np.asarray(maps)
    scores = (scores if scores.dtype in (np.float32, np.float64) else scores.astype(np.float64)).ravel()
    labels, sizes = label_regions(masks)
    labels = labels.ravel()
    n_regions = len(sizes) - 1
    normal_scores = scores[labels == 0]
    n_normal = normal_scores.size
    if n_regions == 0 or n_normal == 0:
        raise ValueError("AUPRO needs both defect regions and normal pixels")
    index = np.arange(scores.size)
    if limit < 1.0:  # pixels scoring below the threshold where FPR first exceeds limit cannot matter
        k = min(n_normal - 1, int(np.floor(limit * n_normal)))
        cut = np.partition(normal_scores, n_normal - 1 - k)[n_normal - 1 - k]
        index = np.flatnonzero(scores >= cut)
    kept = scores[index]
    order = np.argsort(kept)[::-1]  # highest first; ties are merged below, so their order is irrelevant
    kept, region = kept[order], labels[index[order]]
    per_region = np.zeros(len(sizes))
    per_region[1:] = 1.0 / (sizes[1:] * n_regions)
    last_of_run = np.r_[np.flatnonzero(kept[1:] != kept[:-1]), kept.size - 1]
    fpr = np.cumsum(region == 0)[last_of_run] / n_normal
    pro = np.cumsum(per_region[region])[last_of_run]
    return np.r_[0.0, fpr], np.r_[0.0, pro]


def aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float | None:
    """Normalised area under the PRO curve up to FPR ``limit``; None without defect regions."""
    masks = np.asarray(masks).astype(bool)
    if not masks.any() or masks.all():
        return None
    fpr, pro = pro_curve(maps, masks, limit)
    return float(normalised_area(fpr, pro, limit))
