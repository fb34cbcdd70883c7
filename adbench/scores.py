"""What a scoring pass gives, per test image: path, label, score (and map, mask when kept).

The container sits below every layer: methods fill it (:func:`adbench.methods.scoring.score_batches`), the
importer builds it from another tool's CSV, metrics and results read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Scored:
    """What a pass over a set of images gives: per image path, label, score (and map, mask when kept)."""

    paths: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    scores: np.ndarray | None = None
    masks: np.ndarray | None = None
    maps: np.ndarray | None = None
    model_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def model_images_per_s(self) -> float:
        return len(self.paths) / max(self.model_seconds, 1e-12)

    @property
    def end_to_end_images_per_s(self) -> float:
        return len(self.paths) / max(self.total_seconds, 1e-12)

    def subset(self, index: np.ndarray) -> Scored:
        """The images ``index`` of this pass (timings stay those of the whole pass)."""
        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[index]

        return Scored([self.paths[i] for i in index], pick(self.labels), pick(self.scores), pick(self.masks), pick(self.maps),
                      self.model_seconds, self.total_seconds)
