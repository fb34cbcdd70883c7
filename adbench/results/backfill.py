"""Metrics added to the registry after a record was written, filled in from the record's per-image table
(``python -m adbench.migrate`` runs this after its digest migration).

Only image-level metrics are filled: the table stores every image score, so each comes out exactly as a new run
computes it (:func:`adbench.metrics.weighted.table_metrics`), and its 95% interval from the record's own bootstrap
seed, level and resamples draws the same resamples as the run did. Pixel and region metrics are binned in the
table (:mod:`adbench.metrics.per_image`), not exact: they stay absent (n/a in the leaderboard) until the run is
repeated. A record that holds every metric is left alone, so rerunning is safe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..files import atomic_write_text
from ..metrics.intervals import METHODS, pooled_intervals
from ..metrics.per_image import read_per_image
from ..metrics.registry import IMAGE_METRICS
from ..metrics.suite import undefined_reasons
from ..metrics.weighted import table_metrics
from .records import change_records, record_problem


def missing(record: dict[str, Any]) -> tuple[str, ...]:
    """The registry's image metrics ``record`` lacks."""
    return tuple(m for m in IMAGE_METRICS if m not in record["metrics"])


def fill_record(path: Path) -> tuple[str, ...]:
    """Add the missing image metrics to the record at ``path`` (value, reason when undefined, ci95, interval method)
    from its per-image table; returns their names. DataError naming why it cannot."""
    record = json.loads(path.read_text())
    names = missing(record)
    if not names:
        return ()
    problem = record_problem(path, record)
    if problem or not record.get("per_image"):
        raise DataError(problem or "it has no per-image table")
    table = read_per_image(path.parent / record["per_image"])
    boot = record["bootstrap"]
    values = table_metrics(table, names)
    intervals = pooled_intervals([table], boot["level"], boot["seed"], boot["resamples"], names)
    labels = table["label"].to_numpy().astype(bool)
    record["metrics"].update(values)
    record["ci95"].update({m: intervals[m] if values[m] is not None else None for m in names})
    reasons = undefined_reasons(values, labels, None, None)
    record["metrics_undefined"].update({m: reasons[m] for m in names if m in reasons})
    boot["method"].update({m: METHODS[m] for m in names})
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return names


def fill(results_dir: Path) -> tuple[list[tuple[Path, tuple[str, ...]]], list[tuple[Path, str]]]:
    """:func:`fill_record` on every record under ``results_dir/records``: (path, metrics added), (path, why not)."""
    return change_records(results_dir, fill_record)
