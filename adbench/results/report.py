"""``adbench-report``: the leaderboard, rendered from the results DataFrame (:mod:`.table`).

Writes ``LEADERBOARD.md``, ``leaderboard.csv`` / ``leaderboard.parquet`` (one row per configuration and
category, seeds aggregated, ties marked) and ``plots/``. The markdown is a list of section functions
(:data:`SECTIONS`), each taking the :class:`Report` and returning markdown lines: per (dataset, backbone,
image size, setting) the metric tables with uncertainty, best and ties, cost, the per-defect breakdown,
the papers' numbers, memory-bank formulas and trade-off plots; then the rank test across categories and
datasets with its critical-difference diagram, and the robustness tables.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError
from ..metrics.registry import HEADLINE
from ..files import atomic_write, atomic_write_text
from . import setting_sections
from .defects import defect_tables
from .degraded import degradation_section
from .implementations import implementations_section
from .formatting import pct
from .naming import DEVIATES
from .paper_numbers import comparison_lines, memory_bank_lines
from .plots import section_plots
from .records import portable_path, scan_records
from .stats import (
    ALPHA,
    MIN_BLOCKS,
    PROCEDURE,
    RankTest,
    TableReader,
    cd_diagram,
    mark_ties,
    rank_test,
    seed_intervals,
    table_reader,
)
from .table import SECTION, STANDARD, current, frame, leaderboard

@dataclass
class Report:
    """What every section reads: all runs, the current ones, the leaderboard table and the raw records."""

    runs: pd.DataFrame  # a row per record (``records[i]`` is row i)
    records: list[dict[str, Any]]
    board: pd.DataFrame  # :func:`.table.leaderboard` with ties marked
    source: str
    plots_dir: Path | None = None
    read: TableReader | None = None  # the runs' per-image tables (paired comparisons)

    @cached_property
    def current(self) -> pd.DataFrame:
        """The runs the leaderboard counts (:func:`.table.current`)."""
        return current(self.runs)

    def records_of(self, runs: pd.DataFrame) -> list[dict[str, Any]]:
        return [self.records[i] for i in runs.index]

    def __post_init__(self) -> None:
        self._row = {id(r): i for i, r in enumerate(self.records)}

    def name_of(self, record: dict[str, Any]) -> str:
        """The row name of one of :attr:`records`."""
        return self.runs.name.iat[self._row[id(record)]]


Section = Callable[[Report], list[str]]


def markdown(table: pd.DataFrame) -> str:
    """A DataFrame as a pipe table, cells verbatim."""
    return table.to_markdown(index=False, tablefmt="pipe", disable_numparse=True)


def _number(value: float, spec: str) -> str:
    return "n/a" if np.isnan(value) else format(value, spec)


MARKS = {"tie": "≈", "worse": "↓", "untested": "?"}  # the legend is CELL_NOTE


def cell_text(row: pd.Series, metric: str) -> str:
    """``mean [low, high]`` in % (k seeds: the seed mean, its interval over images and seeds, ``(n=k)``; ``± std``
    when the seeds' tables are missing); **bold** best, ≈ tie, ↓ significantly worse, ? not tested (:data:`MARKS`)."""
    if np.isnan(row[metric]):
        return "n/a"
    text = pct(row[metric])
    if row.get(f"{metric}_best"):
        text = f"**{text}**"
    elif row.get(f"{metric}_worse"):
        text = f"{MARKS['worse']}{text}"
    elif row.get(f"{metric}_tie"):
        text = f"{MARKS['tie']}{text}"
    elif f"{metric}_tested" in row and pd.isna(row.degrade):
        text = f"{MARKS['untested']}{text}"
    low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
    seeds = f" (n={row.n_seeds})" if row.n_seeds > 1 else ""
    if np.isnan(low):
        return f"{text} ± {100 * row[f'{metric}_std']:.1f}{seeds}" if seeds else text
    return f"{text} [{pct(low)}, {pct(high)}]{seeds}"


def _groups(board: pd.DataFrame) -> dict[str, list[str]]:
    """Category groups to average over: the records' own groups (e.g. textures / objects) and all."""
    groups = {str(g): sorted(rows.category.unique()) for g, rows in board.dropna(subset=["group"]).groupby("group")}
    categories = sorted(board.category.unique())
    if len(categories) > 1:
        groups["all"] = categories
    return groups


def metric_table(board: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Configurations x categories (+ group means of the per-category means) for one metric."""
    categories, groups = sorted(board.category.unique()), _groups(board)
    rows = []
    for name, runs in board.groupby("name", sort=True):
        by_category = {r.category: r for _, r in runs.iterrows()}
        row = {"method": name} | {c: cell_text(by_category[c], metric) if c in by_category else "–" for c in categories}
        for group, members in groups.items():
            values = [by_category[c][metric] for c in members if c in by_category]
            complete = len(values) == len(members) and not np.isnan(values).any()
            row[f"avg {group}"] = pct(float(np.mean(values))) if complete else "–"
        rows.append(row)
    return pd.DataFrame(rows)


def _data_line(board: pd.DataFrame) -> str:
    parts = []
    for category, rows in board.groupby("category", sort=True):
        first = rows.iloc[0]
        digest = f"files `{first.data_digest[:8]}`" if isinstance(first.data_digest, str) else "file digest not recorded"
        parts.append(f"`{category}` ({first.n_train} train / {first.n_test} test, {digest})")
    return "; ".join(parts)


def _seeds(runs: pd.DataFrame) -> str:
    seeds = sorted(runs.seed.dropna().unique())
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(str(s) for s in seeds)}"


def cost_table(board: pd.DataFrame) -> pd.DataFrame:
    """Per configuration and category: device, seeds, mean fit time, throughput, bank, FLOPs and latency (where
    recorded), peak memory."""
    gpu = board.peak_gpu_bytes.notna().any() and (board.peak_gpu_bytes > 0).any()
    flops = board.flops_per_image.notna().any()
    rows = []
    for _, r in board.iterrows():
        fit, test = ("‡" if r.cached_fit else ""), ("‡" if r.cached_test else "")
        row = {"method": r["name"], "category": r.category, "device": r.devices + ("†" if r.loaded else ""), "seeds": str(r.n_seeds),
               "fit s": f"{r.fit_seconds:.1f}{fit}", "model img/s": f"{r.model_images_per_s:.1f}{test}",
               "end-to-end img/s": f"{r.end_to_end_images_per_s:.1f}{test}", "memory bank": r.bank_shape if isinstance(r.bank_shape, str) else "–",
               "bank MiB": f"{r.bank_bytes / 2**20:.2f}"}
        if flops:
            row |= {"GFLOP/img": _number(r.flops_per_image / 1e9, ".2f"), "latency ms p50": _number(r.latency_ms_p50, ".1f")}
        row["peak RSS GiB"] = f"{r.peak_rss_bytes / 2**30:.2f}"
        if gpu:
            row["peak GPU GiB"] = f"{(0 if np.isnan(r.peak_gpu_bytes) else r.peak_gpu_bytes) / 2**30:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


CELL_NOTE = (
    "Cells: value [95% CI over test images] in %. Image AUROC: score interval (Newcombe 2006) with the binormal variance, "
    "widened by DeLong's where the data vary more; other metrics: expanded BCa bootstrap over test images, for pixel metrics joined with a "
    "logit jackknife-t interval (Wilson bound when every resample is equal); never zero width (adbench/metrics/intervals.py, coverage in benchmarks/results/statistics.json). "
    "Several seeds (n = seeds): the seed mean, its interval over the test images and the seeds. "
    f"**Bold**: best in the column. Compared with each other on the same test images by a {PROCEDURE} (image AUROC: "
    "DeLong's joint covariance of every configuration and seed; others: paired bootstrap): "
    f"{MARKS['worse']} significantly worse than the best, {MARKS['tie']} not significantly different, {MARKS['untested']} not "
    "tested (no per-image table, or other test images). Rows on degraded test images are not compared. "
    "n/a = not applicable, – = not run."
)


def section(report: Report, key: tuple, board: pd.DataFrame) -> list[str]:
    """One (dataset, backbone, image size, setting) section."""
    dataset, backbone, size, setting = key
    runs = report.current[(report.current[SECTION] == pd.Series(key, index=SECTION)).all(axis=1)]
    records = report.records_of(runs)
    first = records[0]
    lines = [f"## {dataset} · {backbone} · {size} px" + ("" if setting == STANDARD else f" · setting {setting}"), "",
             f"Backbone `{backbone}` (weights: {first.get('weights')}), resize {first.get('resize')} → crop {size} px, "
             f"{_seeds(runs)}, device {', '.join(sorted(runs.device_name.dropna().unique()))}. Data: {_data_line(board)}.", ""]
    for metric in HEADLINE:
        if board[metric.name].isna().all():
            lines += [f"**{metric.label}**: not applicable (no pixel masks, or image-level methods only).", ""]
            continue
        lines += [f"**{metric.label} (%)**", "", markdown(metric_table(board, metric.name)), ""]
    lines += [CELL_NOTE, "", markdown(cost_table(board)), ""]
    if board.loaded.any():
        lines += ["† the machine was oversubscribed during a run of this row (1-min load average above 1.5x its CPU count at the "
                  "end): its times are slower than the same run on an idle machine.", ""]
    if (board.cached_fit | board.cached_test).any():
        lines += ["‡ backbone features read from the feature cache (`cache_dir`): backbone time is not included; "
                  "rerun with `cache_dir=null` for end-to-end figures.", ""]
    deviations = {r["method"]: r["deviations"] for r in records if r.get("deviations")}
    if deviations:
        lines += [f"**Deviations from the papers** ({DEVIATES} in a row name), as each method declares them:", ""]
        lines += [f"- {method}: {'; '.join(items)}" for method, items in sorted(deviations.items())] + [""]
    clean = [r for r in records if not r.get("degrade")]
    tables = defect_tables(clean, [report.name_of(r) for r in clean])
    if tables:
        lines += ["**Per defect type**: image AUROC of each defect type against the good test images / AUPRO over its regions "
                  "(%, mean over seeds; n = test images of the type).", ""]
        for category, table in tables.items():
            lines += [f"`{category}`", "", markdown(table), ""]
    lines += comparison_lines(records, report.name_of) + memory_bank_lines(records, report.name_of)
    if report.plots_dir is not None:
        for path in section_plots(records, report.plots_dir, report.name_of, None if setting == STANDARD else setting):
            lines += [f"![{path.stem}]({report.plots_dir.name}/{path.name})", ""]
    return lines


def leaderboard_sections(report: Report) -> list[str]:
    lines: list[str] = []
    for key, board in report.board.groupby(SECTION, sort=True):
        lines += section(report, key, board)
    return lines


def _rank_lines(test: RankTest, label: str) -> list[str]:
    ranks = pd.DataFrame({"configuration": test.ranks.index, "average rank": [f"{r:.2f}" for r in test.ranks]})
    n, k = test.table.shape
    lines = [f"**{label}**: {k} configurations on {n} blocks ({', '.join(test.table.index)}). Friedman χ² = {test.statistic:.2f}, "
             f"Iman-Davenport F = {test.f_statistic:.2f}, p = {test.p_value:.3g} ({test.distribution}).", "", markdown(ranks), ""]
    if test.rejected:
        pairs = [f"{a} vs {b} (p = {test.posthoc.at[a, b]:.3f})" for i, a in enumerate(test.ranks.index)
                 for b in test.ranks.index[i + 1:] if test.posthoc.at[a, b] < ALPHA]
        lines += [f"Friedman rejects at α = {ALPHA}; Nemenyi critical difference {test.cd:.2f} ranks"
                  + (" (its studentized-range approximation is rough below 5 blocks)" if n < MIN_BLOCKS else "") + ". "
                  "Significantly different pairs (Nemenyi): " + ("; ".join(pairs) if pairs else "none") + "."]
    else:
        lines += [f"No significant difference across {n} blocks (p ≥ α = {ALPHA}): the average ranks above are not "
                  f"distinguishable from chance ordering{' with so few blocks' if n < MIN_BLOCKS else ''}, so no post-hoc "
                  "test is run and no critical-difference diagram is drawn."]
    if test.left_out:
        lines.append(f"Not ranked (not run on every block above): {', '.join(test.left_out)}.")
    return lines + [""]


def rank_section(report: Report) -> list[str]:
    """Average ranks and the Friedman test across categories and datasets; Nemenyi and the CD diagram only where it rejects."""
    lines = ["## Across categories and datasets: ranks, Friedman test, critical differences", "",
             "Blocks are (dataset, category) cells of clean full-setting runs, each counted once; each configuration's value is "
             "its mean over seeds (and over image sizes, where it was run at several); rank 1 = best, ties share the mean rank. "
             "Configurations run on fewer blocks are dropped until every remaining one covers every remaining block. "
             f"Demšar (2006): Friedman's test first (Iman-Davenport F; below {MIN_BLOCKS} blocks its exact or Monte Carlo "
             "permutation distribution), the Nemenyi post-hoc test and the critical-difference diagram only when it rejects. "
             "With few blocks the test has little power: no significant difference is not evidence of equality.", ""]
    for metric, label in ((m.name, m.label) for m in HEADLINE):
        test = rank_test(report.board, metric)
        if isinstance(test, str):
            lines += [f"**{label}**: no rank test ({test}).", ""]
            continue
        lines += _rank_lines(test, label)
        if report.plots_dir is None:
            continue
        diagram = report.plots_dir / f"critical_difference_{metric}.png"
        if test.rejected:
            cd_diagram(test, diagram, f"{label}: average rank over {test.table.shape[0]} blocks (bars: not significantly different, Nemenyi α={ALPHA})")
            lines += [f"![critical difference {label}]({report.plots_dir.name}/{diagram.name})", ""]
        else:
            diagram.unlink(missing_ok=True)  # an earlier report's diagram would contradict the text
    return lines


def robustness_section(report: Report) -> list[str]:
    return degradation_section(report.records_of(report.current), report.name_of)


# each returns markdown lines; settings sections (few-shot, contamination, multi-class) are appended here
SECTIONS: list[Section] = [leaderboard_sections, implementations_section, rank_section, robustness_section, setting_sections.report_section]


def build(records: list[dict[str, Any]], source: str, plots_dir: Path | None = None, paths: list[str | None] | None = None,
          read: TableReader | None = None) -> Report:
    """The report's tables from run records (``paths`` relative to the results folder; ``read``: their per-image tables)."""
    runs = frame(records, paths)
    board = seed_intervals(mark_ties(leaderboard(runs), current(runs), read), current(runs), read)
    return Report(runs, records, board, source, plots_dir, read)


def render(records: list[dict[str, Any]], source: str, plots_dir: Path | None = None, **options: Any) -> str:
    """The leaderboard markdown; with ``plots_dir`` (next to the markdown file) the PNG plots too."""
    return render_report(build(records, source, plots_dir, **options))


def render_report(report: Report, skipped: list[str] | None = None) -> str:
    """The markdown; ``skipped``: the record files left out (name and reason), listed under the header."""
    replaced = len(report.runs) - len(report.current)
    lines = ["# adbench leaderboard", "",
             f"Generated by `adbench-report` from {len(report.runs)} run records in `{report.source}`"
             + (f" ({replaced} replaced by a newer run of the same configuration and seed)" if replaced else "")
             + f": {len(report.board)} configuration x category rows, also in `leaderboard.csv` / `leaderboard.parquet`; "
             "do not edit by hand.", ""]
    if skipped:
        lines += [f"**Skipped records** ({len(skipped)}, counted nowhere below): " + "; ".join(skipped) + ".", ""]
    for make in SECTIONS:
        lines += make(report)
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(results_dir: Path, output: Path | None = None) -> Path:
    """Write the markdown leaderboard (default ``results_dir/LEADERBOARD.md``), and beside it ``leaderboard.csv``,
    ``leaderboard.parquet`` and ``plots/``."""
    results_dir = Path(results_dir)
    found, skipped = scan_records(results_dir)
    for path, reason in skipped:
        print(f"warning: skipping record {path}: {reason}", file=sys.stderr)
    if not found:
        raise DataError(f"no usable run records under {results_dir / 'records'}" + (f" ({len(skipped)} skipped)" if skipped else "; run adbench first"))
    output = Path(output) if output else results_dir / "LEADERBOARD.md"
    report = build([r for _, r in found], portable_path((results_dir / "records").absolute()), output.parent / "plots",
                   [p.relative_to(results_dir).as_posix() for p, _ in found], table_reader(results_dir))
    atomic_write_text(output, render_report(report, [f"`{p.name}` ({reason})" for p, reason in skipped]))
    atomic_write(output.parent / "leaderboard.csv", lambda tmp: report.board.to_csv(tmp, index=False))
    atomic_write(output.parent / "leaderboard.parquet", lambda tmp: report.board.to_parquet(tmp, index=False))
    return output
