"""Test-set resampling: the stratified bootstrap over test images.

Normal and anomalous images are resampled separately (each class keeps its size, so every resample has
both and AUROC stays defined); pixel metrics resample whole images, each bringing all its pixels and
defect regions. One resample is one row of image counts (a multinomial draw per class); all metrics
of all resamples are evaluated at once from the per-image table (:class:`.weighted.WeightedMetrics`).
The records' intervals are built from these resamples in :mod:`.intervals` (expanded BCa); paired differences
(:mod:`.compare`) use their percentiles.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

RESAMPLES = 1000


@dataclass(frozen=True)
class StratifiedBootstrap:
    """``resamples`` stratified resamples of the test images drawn with ``seed``; percentile intervals at ``level``."""

    resamples: int = RESAMPLES
    seed: int = 0
    level: float = 0.95

    def weights(self, labels: np.ndarray) -> np.ndarray:
        """``(resamples, n)`` counts: how often each image is drawn, each class resampled to its own size."""
        labels = np.asarray(labels).astype(bool)
        rng = np.random.default_rng(self.seed)
        n = labels.size
        drawn = [members[rng.integers(0, members.size, size=(self.resamples, members.size))]
                 for members in (np.flatnonzero(~labels), np.flatnonzero(labels)) if members.size]
        flat = (np.arange(self.resamples)[:, None] * n + np.concatenate(drawn, axis=1)).ravel()
        return np.bincount(flat, minlength=self.resamples * n).reshape(self.resamples, n)

    def percentiles(self, values: np.ndarray) -> list[float] | None:
        """The interval from resampled values (undefined resamples, NaN, left out); None when none is defined."""
        values = values[~np.isnan(values)]
        if values.size == 0:
            return None
        tail = 100 * (1 - self.level) / 2
        low, high = np.percentile(values, [tail, 100 - tail])
        return [float(low), float(high)]
