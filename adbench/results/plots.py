"""Plots of the leaderboard: AUROC vs throughput and AUROC vs memory-bank bytes, and the critical-difference diagram.

One pair of PNGs per leaderboard section (dataset, backbone, image size, setting); one point per method
row, averaged over the section's classes, numbered, its name in a key under the axes: I-AUROC filled,
P-AUROC hollow. Runs that scored cached
backbone features have no end-to-end throughput and are left out of the throughput plot (the
caption says so).
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from ..metrics.registry import LABELS
from .formatting import mean
from .table import used_cached_features

MARKERS = {"image_auroc": ("o", "full"), "pixel_auroc": ("^", "none")}  # the metrics plotted (AUROCs), by registry name


def points(records: list[dict[str, Any]], row_name: Callable[[dict[str, Any]], str]) -> dict[str, dict[str, Any]]:
    """Per method row: mean metrics (%), mean model images/s (None if any run used cached features), mean bank bytes."""
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        rows[row_name(record)].append(record)
    out = {}
    for row, runs in sorted(rows.items()):
        cached = any(used_cached_features(r) for r in runs)
        out[row] = {
            **{m: mean([None if r["metrics"].get(m) is None else 100 * r["metrics"][m] for r in runs], complete=True) for m in MARKERS},
            "images_per_s": None if cached else mean([r["throughput"]["model_images_per_s"] for r in runs], complete=True),
            "bank_bytes": mean([r["memory_bank"]["bytes"] or None for r in runs], complete=True),
            "classes": len(runs),
        }
    return out


def _plot(data: dict[str, dict[str, Any]], x_key: str, x_label: str, title: str, caption: str, path: Path, scale: float = 1.0) -> Path | None:
    """Each row's points numbered beside them; the numbered names in a key under the axes (long names never overlap)."""
    shown = {row: p for row, p in data.items() if p[x_key] and any(p[m] is not None for m in MARKERS)}
    if not shown:
        return None
    caption_lines = textwrap.wrap(caption, 125)
    key_inches = 0.16 * (len(shown) + len(caption_lines)) + 0.15
    fig, ax = plt.subplots(figsize=(7, 4.2 + key_inches), dpi=110)
    colours = plt.get_cmap("tab10")
    key = []
    for i, (row, p) in enumerate(shown.items()):
        colour = colours(i % 10)
        for metric, (marker, fill) in MARKERS.items():
            if p[metric] is not None:
                ax.plot(p[x_key] * scale, p[metric], marker=marker, fillstyle=fill, markersize=9, linestyle="none", color=colour)
        y = p["image_auroc"] if p["image_auroc"] is not None else p["pixel_auroc"]
        ax.annotate(str(i + 1), (p[x_key] * scale, y), textcoords="offset points", xytext=(6, 4), fontsize=8, color=colour)
        key.append(Line2D([], [], marker="s", linestyle="none", color=colour, label=f"{i + 1}  {row}"))
    for metric, (marker, fill) in MARKERS.items():  # legend: what the marker shapes mean
        ax.plot([], [], marker=marker, fillstyle=fill, markersize=8, linestyle="none", color="0.3", label=LABELS[metric])
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(x_label)
    ax.set_ylabel("AUROC (%), mean over classes")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    height = fig.get_figheight()
    fig.legend(handles=key, loc="lower left", bbox_to_anchor=(0.01, (0.16 * len(caption_lines) + 0.05) / height), fontsize=7,
               frameon=False, handletextpad=0.3, labelspacing=0.25, borderaxespad=0)
    fig.text(0.01, 0.05 / height, "\n".join(caption_lines), fontsize=7, alpha=0.8)
    fig.tight_layout(rect=(0, key_inches / height, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def section_plots(records: list[dict[str, Any]], out_dir: Path, row_name: Callable[[dict[str, Any]], str],
                  setting: str | None = None) -> list[Path]:
    """Write the two trade-off PNGs of one leaderboard section (``setting``: its name unless it is the standard
    one; sections of one dataset, backbone and size differ by it); returns the files written."""
    first = records[0]
    stem = f"{first['dataset']}_{first['backbone']}_{first['image_size']}{'' if setting is None else '_' + setting}".replace("/", "-")
    title = f"{first['dataset']} · {first['backbone']} · {first['image_size']} px" + ("" if setting is None else f" · setting {setting}")
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


# --- critical-difference diagram (Demšar 2006, JMLR 7, Fig. 1-2) ------------------------------------------------

def cliques(ranks: pd.Series, posthoc: pd.DataFrame, alpha: float) -> list[tuple[str, ...]]:
    """Maximal runs of rank-adjacent treatments with no significant pair among them (Nemenyi p >= ``alpha``), two or more long."""
    names = list(ranks.index)
    runs = []
    for i in range(len(names)):
        j = i
        while j + 1 < len(names) and all(posthoc.at[a, names[j + 1]] >= alpha for a in names[i:j + 1]):
            j += 1
        if j > i and not any(i >= a and j <= b for a, b in runs):
            runs.append((i, j))
    return [tuple(names[a:b + 1]) for a, b in runs]


def critical_difference_diagram(ranks: pd.Series, posthoc: pd.DataFrame, cd: float, path: Path, title: str,
                                alpha: float = 0.05, label_chars: int = 48) -> Path:
    """Demšar's CD diagram: the rank axis runs from 1 (best) to k, the critical difference is drawn above it, each
    treatment's average rank is marked on the axis and led down to its name (best half on the left, worst half on
    the right, ranks with two decimals), and thick bars below the axis join treatments Nemenyi cannot separate."""
    ranks = ranks.sort_values(kind="stable")
    k = len(ranks)
    groups = cliques(ranks, posthoc, alpha)
    names = {n: (n if len(n) <= label_chars else n[:label_chars - 1] + "…") + f"  ({r:.2f})" for n, r in ranks.items()}
    text_in = max(len(t) for t in names.values()) * 8 * 0.55 / 72 + 0.3  # width of the longest label at 8 pt, inches
    axis_in = max(3.0, 0.75 * (k - 1))
    half = (k + 1) // 2
    bar_y = [-0.35 - 0.22 * i for i in range(len(groups))]
    row0 = (bar_y[-1] if bar_y else -0.2) - 0.45
    rows = [row0 - 0.4 * i for i in range(max(half, k - half))]
    height_in = 0.9 + 0.3 * (len(groups) + len(rows))
    fig = plt.figure(figsize=(axis_in + 2 * text_in, height_in), dpi=120)
    ax = fig.add_axes((text_in / (axis_in + 2 * text_in), 0.02, axis_in / (axis_in + 2 * text_in), 0.84))
    span = k - 1 if k > 1 else 1
    ax.set_xlim(1, max(k, 1 + cd) if k > 1 else 2)
    ax.set_ylim(rows[-1] - 0.3, 1.15)
    ax.axis("off")
    line = {"color": "0.15", "linewidth": 0.9, "clip_on": False}
    ax.plot([1, k], [0, 0], **line)
    for tick in np.arange(1, k + 0.01, 0.5):
        whole = float(tick).is_integer()
        ax.plot([tick, tick], [0, 0.12 if whole else 0.06], **line)
        if whole:
            ax.text(tick, 0.18, f"{int(tick)}", ha="center", va="bottom", fontsize=8)
    ax.plot([1, 1 + cd], [0.85, 0.85], color="0.15", linewidth=1.6, clip_on=False)  # CD, above the axis and its labels
    for end in (1, 1 + cd):
        ax.plot([end, end], [0.78, 0.92], **line)
    ax.text(1 + cd / 2, 0.95, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)
    out = 0.04 * span + 0.02  # how far the leader lines reach beyond the axis ends
    for i, (name, rank) in enumerate(ranks.items()):
        left = i < half
        y = rows[i] if left else rows[k - 1 - i]
        end = 1 - out if left else k + out
        ax.plot([rank], [0], marker="o", markersize=3.5, color="0.15", clip_on=False)
        ax.plot([rank, rank, end], [0, y, y], **line)
        ax.text(end - 0.01 * span if left else end + 0.01 * span, y, names[name], ha="right" if left else "left", va="center", fontsize=8)
    for y, group in zip(bar_y, groups):
        low, high = ranks[group[0]], ranks[group[-1]]
        ax.plot([low - 0.03 * span, high + 0.03 * span], [y, y], color="black", linewidth=3.2, solid_capstyle="round", clip_on=False)
    fig.suptitle(title, fontsize=9, y=0.99)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return path
