"""Robustness tables for the leaderboard: how much the headline metrics (I-AUROC, P-AUROC, ...) drop on degraded test images.

A degraded run (record field ``degrade``, e.g. ``gaussian_noise:3``) is paired with its clean twin:
the record whose config is identical once ``dataset.degrade`` is removed (same method settings,
backbone, data, seed and device). The first table ranks methods by their mean drop per degradation
(ReConPatch's image-quality comparison, CFA's RD-MVTec AD table); the second lists every pair.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from ..metrics.registry import HEADLINE, LABELS
from .formatting import mean, pct
from .records import config_hash

RANKED = "image_auroc"  # the methods are ranked by its mean drop, and its worst drop is shown


def clean_twin_hash(record: dict[str, Any]) -> str:
    """The config hash of ``record``'s run without its degradation."""
    config = copy.deepcopy(record["config"])
    config.get("dataset", {}).pop("degrade", None)
    return config_hash(config)


def base_row(record: dict[str, Any]) -> str:
    """Method name plus the run's own tag (not the degradation)."""
    tag = record.get("config", {}).get("tag")
    return record["method"] + (f" [{tag}]" if tag else "")


def drop(clean: dict[str, Any], degraded: dict[str, Any], metric: str) -> float | None:
    """degraded - clean (negative = worse), None when either value is missing."""
    a, b = clean["metrics"].get(metric), degraded["metrics"].get(metric)
    return None if a is None or b is None else b - a


def _pp(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


def pairs(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(clean, degraded) record pairs; the newest clean twin wins when there are several."""
    clean: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: r.get("created", "")):
        if not record.get("degrade") and "config" in record:
            clean[clean_twin_hash(record)] = record
    found = []
    for record in records:
        if record.get("degrade") and "config" in record:
            twin = clean.get(clean_twin_hash(record))
            if twin is not None:
                found.append((twin, record))
    return sorted(found, key=lambda p: (p[1]["dataset"], p[1]["category"], base_row(p[1]), p[1]["backbone"], p[1]["degrade"], p[1].get("seed", 0)))


def degradation_section(records: list[dict[str, Any]], row_name: Callable[[dict[str, Any]], str] = base_row) -> list[str]:
    """Markdown lines of the robustness section ([] when no degraded run has a clean twin).

    ``records`` should hold one record per run (:func:`adbench.results.table.current`); rows are named
    ``row_name(clean twin)``.
    """
    found = pairs(records)
    unpaired = sum(1 for r in records if r.get("degrade")) - len(found)
    if not found:
        return []
    lines = [
        "## Robustness: clean vs degraded test images",
        "",
        "Test images degraded after loading (training images clean), deterministic per image and seed; "
        "kinds and severities in `adbench/data/degrade.py` (severity 3 = moderate). Each degraded run is paired with "
        "the clean run of the same config. Δ = degraded − clean, in percentage points.",
        "",
        "| method | degradation | runs | " + " | ".join(f"mean Δ {m.label}" for m in HEADLINE) + f" | worst Δ {LABELS[RANKED]} |",
        "|---|---|---|" + "---|" * (len(HEADLINE) + 1),
    ]
    by_method: dict[tuple[str, str, str], list[tuple[dict, dict]]] = defaultdict(list)
    for clean, degraded in found:
        by_method[(row_name(clean), degraded["backbone"], degraded["degrade"])].append((clean, degraded))
    summary = []
    for (row, backbone, degrade), group in by_method.items():
        drops = {m.name: [drop(c, d, m.name) for c, d in group] for m in HEADLINE}
        worst = min((v for v in drops[RANKED] if v is not None), default=None)
        summary.append((degrade, mean(drops[RANKED]), row, backbone, len(group), [mean(drops[m.name]) for m in HEADLINE], worst))
    for degrade, mean_image, row, backbone, n, means, worst in sorted(summary, key=lambda s: (s[0], -(s[1] if s[1] is not None else -1e9))):
        lines.append(f"| {row} · {backbone} | {degrade} | {n} | {' | '.join(_pp(v) for v in means)} | {_pp(worst)} |")
    lines += [
        "",
        "| dataset | category | method | backbone | px | degradation | " + " | ".join(f"{m.label} clean → degraded (Δ)" for m in HEADLINE) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(HEADLINE),
    ]
    for clean, degraded in found:
        cells = [
            f"{pct(clean['metrics'].get(m.name))} → {pct(degraded['metrics'].get(m.name))} ({_pp(drop(clean, degraded, m.name))})" for m in HEADLINE
        ]
        lines.append(
            f"| {degraded['dataset']} | {degraded['category']} | {row_name(clean)} | {degraded['backbone']} | "
            f"{degraded['image_size']} | {degraded['degrade']} | {' | '.join(cells)} |"
        )
    if unpaired:
        lines += ["", f"{unpaired} degraded run(s) without a clean run of the same config are left out."]
    return lines + [""]
