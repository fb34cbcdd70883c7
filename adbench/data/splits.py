"""Splits the runner makes from a dataset's own train/test split, all seeded."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError


def _partition(samples: list, indices: set[int]) -> tuple[list, list]:
    """(samples at ``indices``, the others), both in their original order."""
    return [s for i, s in enumerate(samples) if i in indices], [s for i, s in enumerate(samples) if i not in indices]


def holdout_split(samples: list, fraction: float, seed: int) -> tuple[list, list]:
    """(fit, held out): ``fraction`` of ``samples`` (at least one) held out, drawn with ``seed``."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"threshold.holdout must be in (0, 1), got {fraction}")
    if len(samples) < 2:
        raise ConfigError(f"threshold.holdout needs at least 2 training images to hold one out, found {len(samples)}")
    n_out = min(len(samples) - 1, max(1, round(fraction * len(samples))))
    held = set(np.random.default_rng(seed).permutation(len(samples))[:n_out].tolist())
    taken, rest = _partition(samples, held)
    return rest, taken


def labelled_split(test: list, n: int, seed: int, key: str | None = None) -> tuple[list, list]:
    """(taken, remaining test): ``n`` anomalous test samples drawn with ``seed`` move to training
    (semi-supervised methods, contaminated training sets); they leave the test set, which keeps at
    least one anomaly. ``key`` names the setting in errors (default ``method.labelled_anomalies=n``)."""
    anomalous = [i for i, s in enumerate(test) if s.label == 1]
    if not 0 < n < len(anomalous):
        raise ConfigError(f"{key or f'method.labelled_anomalies={n}'}: the test set has {len(anomalous)} anomalies; "
                          "take at least 1 and leave at least 1 for testing")
    return _partition(test, set(np.random.default_rng(seed).choice(anomalous, n, replace=False).tolist()))
