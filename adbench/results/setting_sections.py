"""Leaderboard sections of the benchmark settings (conf/setting/): the few-shot learning curve, the
contamination curve, and multi-class models beside one model per category.

Each section is a function ``(records, plots_dir) -> markdown lines`` ([] when no run of its setting
exists), over records already reduced to one per run (the report's current runs). A curve's line is a
configuration (:func:`config_name`: its row name without the setting), its points the mean over draws and
seeds, its band their min-max. The full-setting run of the same configuration (same config hash once
the setting is set to full) is drawn beside the curve as the reference.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from ..metrics.registry import HEADLINE, LABELS
from .formatting import pct
from .naming import run_name
from .records import config_hash
from .table import setting_name

matplotlib.use("Agg")
import matplotlib.pyplot as plt

CURVE_METRICS = [(m, LABELS[m]) for m in ("image_auroc", "pixel_auroc")]  # the curves drawn, by registry name
TWIN_METRICS = [(m.name, m.label) for m in HEADLINE]
Panel = tuple[str, str, str, int]  # dataset, category, backbone, image size


def _values(runs: list[dict[str, Any]], metric: str) -> list[float]:
    return [r["metrics"][metric] for r in runs if r["metrics"].get(metric) is not None]


def _spread(values: list[float]) -> str:
    """``mean (min–max, n=k)`` in %, or the value alone."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return pct(values[0])
    return f"{pct(float(np.mean(values)))} ({pct(min(values))}–{pct(max(values))}, n={len(values)})"


def config_name(record: dict[str, Any]) -> str:
    """The run's row name without its setting: the line it belongs to."""
    full = {"name": "full"}
    return run_name({**record, "setting": full, "config": {**record.get("config", {}), "setting": full}})


def full_twin_hash(record: dict[str, Any]) -> str:
    """The config hash of ``record``'s run in the full setting (same method, data, seed and device)."""
    return config_hash({**record.get("config", {}), "setting": {"name": "full"}})


def _panels(records: list[dict[str, Any]]) -> dict[Panel, list[dict[str, Any]]]:
    panels: dict[Panel, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        panels[(record["dataset"], record["category"], record["backbone"], record["image_size"])].append(record)
    return dict(sorted(panels.items()))


def _curves(runs: list[dict[str, Any]], x_of: Callable[[dict[str, Any]], float]) -> dict[str, dict[float, list[dict[str, Any]]]]:
    """Configuration name → x → its runs (draws and seeds)."""
    curves: dict[str, dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        curves[config_name(run)][x_of(run)].append(run)
    return {name: dict(sorted(points.items())) for name, points in sorted(curves.items())}


def _plot_curves(curves: dict, full: dict[str, dict[str, Any]], metrics: list[tuple[str, str]], x_label: str, log_x: bool,
                 title: str, path: Path) -> Path:
    """One panel per metric: a line per configuration through the means, a band over min-max, the full run dotted."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4), dpi=110, squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (metric, label) in zip(axes[0], metrics):
        for i, (name, points) in enumerate(curves.items()):
            xs = [x for x, runs in points.items() if _values(runs, metric)]
            if not xs:
                continue
            values = [100 * np.asarray(_values(points[x], metric)) for x in xs]
            colour = colours(i % 10)
            ax.plot(xs, [v.mean() for v in values], marker="o", color=colour, label=name)
            ax.fill_between(xs, [v.min() for v in values], [v.max() for v in values], color=colour, alpha=0.2, linewidth=0)
            twin = full.get(name)
            if twin is not None and twin["metrics"].get(metric) is not None:
                ax.axhline(100 * twin["metrics"][metric], color=colour, linestyle=":", linewidth=1)
        if log_x:
            ax.set_xscale("log", base=2)
        all_x = sorted({x for points in curves.values() for x in points})
        ax.set_xticks(all_x, [f"{x:g}" for x in all_x])
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"{label} (%)")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.text(0.01, 0.01, "line: mean over draws and seeds; band: min–max; dotted: the full-setting run", fontsize=7, alpha=0.8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _cost_cell(runs: list[dict[str, Any]]) -> str:
    """Mean bank MiB / GFLOPs per image / latency p50 ms of ``runs`` (n/a where a record has no cost block)."""
    costs = [r.get("cost") or {} for r in runs]
    bank = np.mean([r["memory_bank"]["bytes"] for r in runs]) / 2**20
    flops = [c.get("flops_per_image") for c in costs]
    latency = [c.get("latency_ms_p50") for c in costs]
    gflops = "n/a" if None in flops else f"{np.mean(flops) / 1e9:.2f}"
    p50 = "n/a" if None in latency else f"{np.mean(latency):.0f}"
    return f"{bank:.2f} / {gflops} / {p50}"


def _curve_section(records: list[dict[str, Any]], plots_dir: Path | None, setting: str, heading: list[str],
                   x_of: Callable[[dict[str, Any]], float], column: Callable[[float, list[dict[str, Any]]], str],
                   x_label: str, log_x: bool, suffix: str) -> list[str]:
    runs = [r for r in records if setting_name(r) == setting]
    if not runs:
        return []
    full_runs = {r.get("config_hash"): r for r in records if setting_name(r) == "full"}
    lines = list(heading)
    for (dataset, category, backbone, size), group in _panels(runs).items():
        curves = _curves(group, x_of)
        full = {name: full_runs.get(full_twin_hash(next(iter(points.values()))[0])) for name, points in curves.items()}
        full = {name: twin for name, twin in full.items() if twin is not None}
        xs = sorted({x for points in curves.values() for x in points})
        lines += [f"### {dataset} / {category} · {backbone} · {size} px", ""]
        metrics = [(m, label) for m, label in CURVE_METRICS if _values(group, m)]
        for metric, label in metrics:
            header = ["configuration"] + [column(x, [r for points in curves.values() for r in points.get(x, [])]) for x in xs]
            header += ["full setting"] if full else []
            lines += [f"**{label} (%)**: mean (min–max over n draws and seeds)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for name, points in curves.items():
                cells = [_spread(_values(points.get(x, []), metric)) if x in points else "–" for x in xs]
                if full:
                    twin = full.get(name)
                    cells.append(f"{pct(twin['metrics'].get(metric))} (n_train {twin['n_train']})" if twin else "–")
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
        header = ["configuration"] + [column(x, [r for points in curves.values() for r in points.get(x, [])]) for x in xs]
        lines += ["**Cost**: memory bank MiB / GFLOPs per image / latency p50 ms at batch 1 (means over the runs)", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += [f"| {name} | " + " | ".join(_cost_cell(points[x]) if x in points else "–" for x in xs) + " |" for name, points in curves.items()]
        lines.append("")
        if plots_dir is not None and metrics:
            stem = f"{dataset}_{category}_{backbone}_{size}_{suffix}".replace("/", "-")
            path = _plot_curves(curves, full, metrics, x_label, log_x, f"{dataset}/{category} · {backbone} · {size} px", plots_dir / f"{stem}.png")
            lines += [f"![{path.stem}]({plots_dir.name}/{path.name})", ""]
    return lines


def learning_curve_section(records: list[dict[str, Any]], plots_dir: Path | None = None) -> list[str]:
    """Few-shot runs: metric vs K training images, a line per configuration, a band over draws."""
    heading = ["## Few-shot: learning curves", "",
               ("K normal training images drawn per draw (`setting=few_shot setting.shots=K setting.draw=D`; for one draw the "
                "K=1 images are among the K=4, those among the K=16); the test set is the category's full test set. The record's "
                "`n_train` is K."), ""]
    return _curve_section(records, plots_dir, "few_shot", heading, lambda r: r["setting"]["shots"],
                          lambda x, runs: f"K={x:g}", "training images K (log)", True, "learning_curve")


def contamination_section(records: list[dict[str, Any]], plots_dir: Path | None = None) -> list[str]:
    """Contaminated runs: metric vs ratio p of anomalies added to training, one section per protocol."""
    fixed = ["## Contaminated training sets", "",
             ("floor(p x n_train) real anomalous test images are added, unlabelled, to the normal training images "
              "(`setting=contaminated setting.ratio=p`), as in IM-IAD's noisy setting; + = anomalies added. One pool of "
              "floor(pool x n_train) anomalies (drawn per draw) leaves the test set for every p, p = 0 included, and p trains "
              "on the first of them: every point of a curve is scored on the same test images."), ""]
    im_iad = ["## Contaminated training sets, IM-IAD protocol", "",
              ("As above, but floor(p x n_train) anomalies are drawn per p and leave the test set "
               "(`setting.protocol=im_iad`, IM-IAD's protocol): each p is scored on the test set that remains, so the test "
               "sets of different p differ by the moved anomalies."), ""]

    def column(x: float, runs: list[dict[str, Any]]) -> str:
        added = sorted({r["setting"].get("added_anomalies", len(r.get("train_anomalies", []))) for r in runs})
        return f"p={x:g} (+{'/'.join(str(a) for a in added)})"

    def protocol(record: dict[str, Any]) -> str:  # records from before the protocol key followed IM-IAD's
        return record.get("setting", {}).get("protocol", "im_iad")

    return [line for name, heading, suffix in (("fixed_test", fixed, "contamination"), ("im_iad", im_iad, "contamination_im_iad"))
            for line in _curve_section([r for r in records if setting_name(r) != "contaminated" or protocol(r) == name], plots_dir,
                                       "contaminated", heading,
                                       lambda r: r["setting"]["ratio"], column, "anomalies added per normal training image p",
                                       False, suffix)]


def _one_class_key(record: dict[str, Any]) -> tuple:
    """What a multi-class category score and a one-class run must share to stand side by side."""
    return (config_name(record), record["dataset"], record["category"], record["backbone"], record["image_size"],
            record.get("resize"), record.get("seed"), record.get("device"))


def multi_class_section(records: list[dict[str, Any]], plots_dir: Path | None = None) -> list[str]:
    """Each multi-class run's per-category metrics beside the one-class run of the same configuration and image size."""
    runs = [r for r in records if setting_name(r) == "multi_class"]
    if not runs:
        return []
    one_class = {_one_class_key(r): r for r in records if setting_name(r) == "full"}
    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in runs:
        by_run[record["config_hash"]].append(record)
    lines = ["## Multi-class: one model for several categories, beside one model per category", "",
             ("`setting=multi_class`: one model fitted on the union of the categories' training images, scored on each "
              "category's test set; one-class = the full-setting run of the same configuration, seed and image size on that "
              "category alone. Δ = multi-class − one-class, in points. Cost: the one multi-class model, each one-class model, "
              "and the one-class models together (training images, fit time and bank bytes summed)."), ""]
    for parts in by_run.values():
        parts = sorted(parts, key=lambda r: (r["dataset"], r["category"]))
        first = parts[0]
        names = ", ".join(f"{p['dataset']}/{p['category']}" for p in parts)
        lines += [f"### {config_name(first)} · {first['backbone']} · {first['image_size']} px · {len(parts)} categories", "",
                  f"One model on {first['n_train']} training images of {names}.", ""]
        header = ["category", "one-class n_train"] + [f"{label} one / multi (Δ)" for _, label in TWIN_METRICS]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        twins = [one_class.get(_one_class_key(p)) for p in parts]
        deltas: dict[str, list[float]] = defaultdict(list)
        for part, twin in zip(parts, twins):
            cells = [f"{part['dataset']}/{part['category']}", str(twin["n_train"]) if twin else "–"]
            for metric, _ in TWIN_METRICS:
                multi = part["metrics"].get(metric)
                one = twin["metrics"].get(metric) if twin else None
                if multi is not None and one is not None:
                    deltas[metric].append(multi - one)
                    cells.append(f"{pct(one)} / {pct(multi)} ({100 * (multi - one):+.1f})")
                else:
                    cells.append(f"{pct(one) if twin else '–'} / {pct(multi)}")
            lines.append("| " + " | ".join(cells) + " |")
        if any(deltas.values()):
            lines.append("| mean Δ | | " + " | ".join(f"{100 * np.mean(deltas[m]):+.1f} (n={len(deltas[m])})" if deltas[m] else "–"
                                                      for m, _ in TWIN_METRICS) + " |")
        lines.append("")
        found = [(p, t) for p, t in zip(parts, twins) if t is not None]
        lines += ["| model | training images | fit s | bank MiB | GFLOPs / image | latency p50 / p95 (ms) |", "|---|---|---|---|---|---|",
                  _cost_row(f"multi-class ({len(parts)} categories)", first)]
        lines += [_cost_row(f"one-class {p['dataset']}/{p['category']}", t) for p, t in found]
        if len(found) > 1:
            lines.append(f"| one-class, {len(found)} models | {sum(t['n_train'] for _, t in found)} | {sum(t['fit_seconds'] for _, t in found):.1f} | "
                         f"{sum(t['memory_bank']['bytes'] for _, t in found) / 2**20:.2f} | | |")
        missing = [f"{p['dataset']}/{p['category']}" for p, t in zip(parts, twins) if t is None]
        if missing:
            lines += ["", f"No one-class run of this configuration at {first['image_size']} px for: {', '.join(missing)}."]
        lines.append("")
    return lines


def _cost_row(label: str, record: dict[str, Any]) -> str:
    """Training images, fit time, bank and per-image cost of one run (n/a where its record has no cost block)."""
    cost = record.get("cost") or {}
    flops = "n/a" if cost.get("flops_per_image") is None else f"{cost['flops_per_image'] / 1e9:.2f}"
    latency = "n/a" if cost.get("latency_ms_p50") is None else f"{cost['latency_ms_p50']:.0f} / {cost['latency_ms_p95']:.0f}"
    return (f"| {label} | {record['n_train']} | {record['fit_seconds']:.1f} | {record['memory_bank']['bytes'] / 2**20:.2f} | "
            f"{flops} | {latency} |")


def settings_sections(records: list[dict[str, Any]], plots_dir: Path | None = None) -> list[str]:
    """Every settings section, in order: few-shot, contamination, multi-class."""
    return [line for make in (learning_curve_section, contamination_section, multi_class_section) for line in make(records, plots_dir)]


def report_section(report: Any) -> list[str]:
    """:func:`settings_sections` over a report's current runs (the report's section hook)."""
    return settings_sections(report.records_of(report.current), report.plots_dir)
