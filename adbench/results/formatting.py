"""Small number formats and averages shared by the leaderboard's sections."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def pct(value: float | None, decimals: int = 1) -> str:
    """A fraction in % (one decimal); ``n/a`` for None or NaN."""
    return "n/a" if value is None or np.isnan(value) else f"{100 * value:.{decimals}f}"


def mean(values: Iterable[float | None], complete: bool = False) -> float | None:
    """The mean of the values present; None when none is, or (``complete``) when any is missing."""
    values = list(values)
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present and (not complete or len(present) == len(values)) else None
