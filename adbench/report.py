"""``python -m adbench.report``: markdown leaderboards generated from the run records.

One section per (dataset, backbone, image size): methods x categories with I-AUROC / P-AUROC /
AUPRO, group averages (MVTec: textures / objects / all), then cost: fit time, throughput,
memory-bank bytes, peak memory.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

from .records import atomic_write_text, load_records

METRIC_NAMES = [("image_auroc", "I-AUROC"), ("pixel_auroc", "P-AUROC"), ("aupro", "AUPRO")]


def row_name(record: dict[str, Any]) -> str:
    return record["method"] + (f" [{record['variant']}]" if record.get("variant") else "")


def latest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the newest record per (row, dataset, category, backbone, size, seed, device)."""
    newest: dict[tuple, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: r.get("created", "")):
        key = (row_name(record), record["dataset"], record["category"], record["backbone"], record["image_size"], record.get("seed"), record.get("device"))
        newest[key] = record
    return list(newest.values())


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


def section(records: list[dict[str, Any]]) -> list[str]:
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
    cell = {(row_name(r), r["category"]): r for r in records}
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
    lines += ["", "| method | category | fit s | model img/s | end-to-end img/s | memory bank | bank MiB | peak RSS GiB |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for category in categories:
            r = cell.get((row, category))
            if not r:
                continue
            bank = r["memory_bank"]
            shape = "x".join(str(s) for s in bank["shape"]) or "–"
            lines.append(
                f"| {row} | {category} | {r['fit_seconds']:.1f} | {r['throughput']['model_images_per_s']:.1f} | "
                f"{r['throughput']['end_to_end_images_per_s']:.1f} | {shape} | {bank['bytes'] / 2**20:.2f} | {r['peak_rss_bytes'] / 2**30:.2f} |"
            )
    return lines + [""]


def render(records: list[dict[str, Any]], source: str) -> str:
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
        lines += section(sections[key])
    return "\n".join(lines)


def write_report(results_dir: Path, output: Path | None = None) -> Path:
    records = load_records(results_dir)
    if not records:
        raise SystemExit(f"no run records under {Path(results_dir) / 'records'}; run python -m adbench first")
    output = output or Path(results_dir) / "LEADERBOARD.md"
    atomic_write_text(output, render(records, str(Path(results_dir) / "records")))
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the markdown leaderboard from run records.")
    parser.add_argument("--results", default="results", help="results folder holding records/ (default: results)")
    parser.add_argument("--output", default=None, help="markdown file (default: RESULTS/LEADERBOARD.md)")
    args = parser.parse_args(argv)
    print(write_report(Path(args.results), Path(args.output) if args.output else None))


if __name__ == "__main__":
    main()
