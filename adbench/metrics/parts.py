"""A scoring pass split per scored category, each part assessed on its own: a one-class run has one part,
the whole test set; a multi-class run one per category (:func:`adbench.data.setting_splits.union`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.setting_splits import Part
from ..scores import Scored


@dataclass
class PartScores:
    """One scored category: its record fields, its images' part of the scoring pass, their test indices,
    and whether pixel metrics apply (maps and masks)."""

    fields: dict[str, Any]
    scored: Scored
    index: np.ndarray
    pixel: bool


def split_by_part(parts: list[Part], out: Scored, pixel: bool) -> list[PartScores]:
    """One ``PartScores`` per part, in order (``pixel``: the method gave maps and the run's data has masks)."""
    found = []
    for part in parts:
        index = part.indices(out.paths)
        fields = {"dataset": part.dataset, "category": part.category, "group": part.group, "n_test": len(index)}
        found.append(PartScores(fields, out.subset(index), index, pixel and part.has_masks))
    return found
