"""Trade-off plots for the leaderboard: AUROC vs throughput and AUROC vs memory-bank bytes.

One pair of PNGs per leaderboard section (dataset, backbone, image size); one point per method row,
averaged over the section's classes: I-AUROC filled, P-AUROC hollow. Runs that scored cached
backbone features have no end-to-end throughput and are left out of the throughput plot (the
caption says so).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter

from .table import used_cached_features

METRICS = [("image_auroc", "I-AUROC", "o", "full"), ("pixel_auroc", "P-AUROC", "^", "none")]


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present and len(present) == len(values) else None


def points(records: list[dict[str, Any]], row_name: Callable[[dict[str, Any]], str]) -> dict[str, dict[str, Any]]:
    """Per method row: mean metrics (%), mean model images/s (None if any run used cached features), mean bank bytes."""
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        rows[row_name(record)].append(record)
    out = {}
    for row, runs in sorted(rows.items()):
        cached = any(used_cached_features(r) for r in runs)
        out[row] = {
            **{m: _mean([None if r["metrics"].get(m) is None else 100 * r["metrics"][m] for r in runs]) for m, *_ in METRICS},
            "images_per_s": None if cached else _mean([r["throughput"]["model_images_per_s"] for r in runs]),
            "bank_bytes": _mean([r["memory_bank"]["bytes"] or None for r in runs]),
            "classes": len(runs),
        }
    return out


def _plot(data: dict[str, dict[str, Any]], x_key: str, x_label: str, title: str, caption: str, path: Path, scale: float = 1.0) -> Path | None:
    shown = {row: p for row, p in data.items() if p[x_key] and any(p[m] is not None for m, *_ in METRICS)}
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    colours = plt.get_cmap("tab10")
    for i, (row, p) in enumerate(shown.items()):
        for metric, _, marker, fill in METRICS:
            if p[metric] is not None:
                ax.plot(p[x_key] * scale, p[metric], marker=marker, fillstyle=fill, markersize=9, linestyle="none", color=colours(i % 10))
        y = p["image_auroc"] if p["image_auroc"] is not None else p["pixel_auroc"]
        ax.annotate(row, (p[x_key] * scale, y), textcoords="offset points", xytext=(6, 4), fontsize=8, color=colours(i % 10))
    for _, label, marker, fill in METRICS:  # legend: what the marker shapes mean
        ax.plot([], [], marker=marker, fillstyle=fill, markersize=8, linestyle="none", color="0.3", label=label)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(x_label)
    ax.set_ylabel("AUROC (%), mean over classes")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.text(0.01, 0.01, caption, fontsize=7, alpha=0.8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def section_plots(records: list[dict[str, Any]], out_dir: Path, row_name: Callable[[dict[str, Any]], str]) -> list[Path]:
    """Write the two trade-off PNGs of one leaderboard section; returns the files written."""
    first = records[0]
    stem = f"{first['dataset']}_{first['backbone']}_{first['image_size']}".replace("/", "-")
    title = f"{first['dataset']} · {first['backbone']} · {first['image_size']} px"
    data = points(records, row_name)
    devices = ", ".join(sorted({r.get("device_name") or r.get("device", "?") for r in records}))
    skipped = sorted(row for row, p in data.items() if p["images_per_s"] is None)
    caption = f"model-only images/s on {devices}" + (f"; not shown (scored cached features): {', '.join(skipped)}" if skipped else "")
    written = [
        _plot(data, "images_per_s", "test images per second (model only, log)", title, caption, out_dir / f"{stem}_auroc_vs_throughput.png"),
        _plot(data, "bank_bytes", "memory bank, MiB (everything fitted that scoring needs, log)", title,
              "bank bytes as each method reports them", out_dir / f"{stem}_auroc_vs_memory.png", scale=1 / 2**20),
    ]
    return [p for p in written if p is not None]
