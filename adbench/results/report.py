"""``python -m adbench.report``: markdown leaderboards generated from the run records.

One section per (dataset, backbone, image size): methods x categories with I-AUROC / P-AUROC /
AUPRO, group averages (MVTec: textures / objects / all), then cost: fit time, throughput,
memory-bank bytes, peak memory; the papers' numbers beside the measured ones
(:mod:`adbench.paper_numbers`), the memory-bank formulas evaluated for each run, and PNG plots of
AUROC vs throughput and vs memory-bank bytes (:mod:`adbench.plots`) next to the markdown.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..files import atomic_write_text
from .degraded import degradation_section
from .paper_numbers import comparison_lines, memory_bank_lines
from .plots import section_plots, used_cached_features
from .records import load_records

METRIC_NAMES = [("image_auroc", "I-AUROC"), ("pixel_auroc", "P-AUROC"), ("aupro", "AUPRO")]


def row_name(record: dict[str, Any]) -> str:
    return record["method"] + (f" [{record['variant']}]" if record.get("variant") else "")


def latest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the newest record per (row, dataset, category, backbone, size, seed, device), oldest first."""
    newest: dict[tuple, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: r.get("created", "")):
        key = (row_name(record), record["dataset"], record["category"], record["backbone"], record["image_size"], record.get("seed"), record.get("device"))
        newest[key] = record
    return sorted(newest.values(), key=lambda r: r.get("created", ""))


def contended(record: dict[str, Any]) -> bool:
    """True when the run shared its cores with much other work (1-min load above 1.5x the CPU count)."""
    load, cores = record.get("load_average"), record.get("cpu_count")
    return bool(load and cores and load[0] > 1.5 * cores)


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present and len(present) == len(values) else None


def _groups(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Category groups to average over: the records' own groups (e.g. textures / objects) and all."""
    by_group: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if record.get("group"):
            by_group[record["group"]].add(record["category"])
    categories = sorted({r["category"] for r in records})
    groups = {name: sorted(cats) for name, cats in sorted(by_group.items())}
    if len(categories) > 1:
        groups["all"] = categories
    return groups


def _data_line(records: list[dict[str, Any]]) -> str:
    parts = []
    for category in sorted({r["category"] for r in records}):
        r = next(r for r in records if r["category"] == category)
        root = r["config"]["dataset"].get("root") or r["config"]["dataset"]["name"]
        parts.append(f"`{category}` ({r['n_train']} train / {r['n_test']} test, from `{root}`)")
    return "; ".join(parts)


def section(records: list[dict[str, Any]], plots_dir: Path | None = None) -> list[str]:
    first = records[0]
    devices = sorted({r.get("device_name") or r.get("device") for r in records})
    lines = [
        f"## {first['dataset']} · {first['backbone']} · {first['image_size']} px",
        "",
        f"Backbone `{first['backbone']}` (weights: {first['weights']}), resize {first['resize']} → crop {first['image_size']} px, "
        f"seed {first['seed']}, device {', '.join(devices)}. Data: {_data_line(records)}.",
        "",
    ]
    categories = sorted({r["category"] for r in records})
    groups = _groups(records)
    rows = sorted({row_name(r) for r in records})
    cell = {(row_name(r), r["category"]): r for r in records}  # records come oldest first: the newest wins
    header = ["method"] + categories + [f"avg {g}" for g in groups]
    lines += ["Cells: I-AUROC / P-AUROC / AUPRO (%), n/a = not applicable.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row]
        for category in categories:
            r = cell.get((row, category))
            cells.append(" / ".join(pct(r["metrics"][m]) for m, _ in METRIC_NAMES) if r else "–")
        for cats in groups.values():
            group_records = [cell.get((row, c)) for c in cats]
            if all(group_records):
                cells.append(" / ".join(pct(mean([g["metrics"][m] for g in group_records])) for m, _ in METRIC_NAMES))
            else:
                cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    gpu = any(r.get("peak_gpu_bytes") for r in records)
    lines += ["", "| method | category | device | fit s | model img/s | end-to-end img/s | memory bank | bank MiB | peak RSS GiB |" + (" peak GPU GiB |" if gpu else ""),
              "|---|---|---|---|---|---|---|---|---|" + ("---|" if gpu else "")]
    for r in sorted(records, key=lambda r: (row_name(r), r["category"], r.get("device_name") or r["device"])):
        row, category = row_name(r), r["category"]
        bank = r["memory_bank"]
        shape = "x".join(str(s) for s in bank["shape"]) or "–"
        fit_mark, test_mark = ("‡" if used_cached_features(r, phase) else "" for phase in ("fit", "test"))
        lines.append(
            f"| {row} | {category} | {r.get('device_name') or r['device']}{'†' if contended(r) else ''} | {r['fit_seconds']:.1f}{fit_mark} | {r['throughput']['model_images_per_s']:.1f}{test_mark} | "
            f"{r['throughput']['end_to_end_images_per_s']:.1f}{test_mark} | {shape} | {bank['bytes'] / 2**20:.2f} | {r['peak_rss_bytes'] / 2**30:.2f} |"
            + (f" {(r.get('peak_gpu_bytes') or 0) / 2**30:.2f} |" if gpu else "")
        )
    if any(contended(r) for r in records):
        lines += ["", "† the machine was oversubscribed during this run (1-min load average above 1.5x its CPU count at the end): "
                  "its times are slower than the same run on an idle machine."]
    if any(used_cached_features(r, p) for r in records for p in ("fit", "test")):
        lines += ["", "‡ backbone features read from the feature cache (`cache_dir`): backbone time is not included; "
                  "rerun with `cache_dir=null` for end-to-end figures."]
    lines += [""] + comparison_lines(records, row_name) + memory_bank_lines(records, row_name)
    if plots_dir is not None:
        for path in section_plots(records, plots_dir, row_name):
            lines += [f"![{path.stem}]({plots_dir.name}/{path.name})", ""]
    return lines + [""]


def render(records: list[dict[str, Any]], source: str, plots_dir: Path | None = None) -> str:
    """The leaderboard markdown; with ``plots_dir`` (next to the markdown file) the trade-off PNGs too."""
    records = latest(records)
    sections: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        sections[(record["dataset"], record["backbone"], record["image_size"])].append(record)
    lines = [
        "# adbench leaderboard",
        "",
        f"Generated by `python -m adbench.report` from {len(records)} run records in `{source}`; do not edit by hand.",
        "",
    ]
    for key in sorted(sections):
        lines += section(sections[key], plots_dir)
    lines += degradation_section(records)
    return "\n".join(lines)


def write_report(results_dir: Path, output: Path | None = None) -> Path:
    records = load_records(results_dir)
    if not records:
        raise SystemExit(f"no run records under {Path(results_dir) / 'records'}; run python -m adbench first")
    output = output or Path(results_dir) / "LEADERBOARD.md"
    atomic_write_text(output, render(records, str(Path(results_dir) / "records"), output.parent / "plots"))
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the markdown leaderboard from run records.")
    parser.add_argument("--results", default="results", help="results folder holding records/ (default: results)")
    parser.add_argument("--output", default=None, help="markdown file (default: RESULTS/LEADERBOARD.md)")
    args = parser.parse_args(argv)
    print(write_report(Path(args.results), Path(args.output) if args.output else None))


if __name__ == "__main__":
    main()
