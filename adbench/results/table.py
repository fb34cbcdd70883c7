"""pandas is the results interface: ``adbench.results.load(results_dir)`` returns one row per run record,
and :func:`leaderboard` aggregates the current runs into one row per configuration and category
(seeds as mean ± std) -- the table the markdown leaderboard and ``leaderboard.csv`` are rendered from.

>>> import adbench.results
>>> runs = adbench.results.load("results")
>>> runs.groupby("name").image_auroc.agg(["mean", "std", "count"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..metrics.registry import METRICS
from .naming import distinct_names, run_name
from .records import read_records, replicate_key

SECTION = ["dataset", "backbone", "image_size", "setting"]  # one leaderboard section each
# one configuration scored on one category: its seeds aggregate into a leaderboard row (a multi-class run
# writes a record per category, all with the same config)
REPLICATE = ["config_key", "dataset", "category"]
STANDARD = "full"  # the setting of a run whose config names none: full training set of normal images, one class
# record["cost"] (adbench.methods.cost): per-image model cost, measured on every run since it was added
RECORD_COST = ["params_total", "flops_per_image", "latency_ms_p50", "latency_ms_p95"]
COST = ["fit_seconds", "model_images_per_s", "end_to_end_images_per_s", "bank_bytes", *RECORD_COST, "peak_rss_bytes", "peak_gpu_bytes"]


def contended(record: dict[str, Any]) -> bool:
    """True when the run shared its cores with much other work (1-min load above 1.5x the CPU count)."""
    load, cores = record.get("load_average"), record.get("cpu_count")
    return bool(load and cores and load[0] > 1.5 * cores)


def used_cached_features(record: dict[str, Any], phase: str = "test") -> bool:
    """True when the run's ``phase`` (fit / test) read backbone features from the feature cache."""
    cache = record.get("feature_cache") or {}
    return bool(cache.get(phase, {}).get("hits"))


def setting_name(record: dict[str, Any]) -> str:
    """The benchmark setting a run belongs to (record or config ``setting.name``; ``full`` when neither names one)."""
    setting = record.get("setting") or record.get("config", {}).get("setting")
    if isinstance(setting, dict):
        setting = setting.get("name")
    return str(setting) if setting else STANDARD


def _key(record: dict[str, Any]) -> str:
    config = record.get("config", {})
    # a run that saved a model held training images out for its threshold: another fit (runner hashes it too)
    return replicate_key({**config, "saved_with_threshold": config.get("threshold")} if record.get("saved_model") else config)


def _number(value: Any) -> float:
    return np.nan if value is None else float(value)


def run_row(record: dict[str, Any], path: str | None = None) -> dict[str, Any]:
    """One record as a flat row: config columns, metrics, 95% CIs, cost, identity."""
    config = record.get("config", {})
    metrics, ci = record.get("metrics") or {}, record.get("ci95") or {}
    throughput, bank = record.get("throughput") or {}, record.get("memory_bank") or {}
    row: dict[str, Any] = {
        "method": record["method"], "backbone": record["backbone"], "dataset": record["dataset"], "category": record["category"],
        "group": record.get("group"), "image_size": record["image_size"], "resize": record.get("resize"), "seed": record.get("seed"),
        "setting": setting_name(record), "degrade": record.get("degrade"), "tag": config.get("tag"),
        "device": record.get("device"), "device_name": record.get("device_name") or record.get("device"),
        "data_digest": config.get("dataset", {}).get("digest"), "n_train": record.get("n_train"), "n_test": record.get("n_test"),
    }
    for metric in METRICS:
        low, high = ci.get(metric) or (None, None)
        row |= {metric: _number(metrics.get(metric)), f"{metric}_ci_low": _number(low), f"{metric}_ci_high": _number(high)}
    row |= {
        "fit_seconds": _number(record.get("fit_seconds")),
        "model_images_per_s": _number(throughput.get("model_images_per_s")),
        "end_to_end_images_per_s": _number(throughput.get("end_to_end_images_per_s")),
        "bank_bytes": _number(bank.get("bytes")), "bank_shape": "x".join(str(s) for s in bank.get("shape") or []) or None,
        **{key: _number((record.get("cost") or {}).get(key)) for key in RECORD_COST},
        "peak_rss_bytes": _number(record.get("peak_rss_bytes")), "peak_gpu_bytes": _number(record.get("peak_gpu_bytes")),
        "loaded": contended(record), "cached_fit": used_cached_features(record, "fit"), "cached_test": used_cached_features(record, "test"),
        "config_hash": record.get("config_hash"), "config_key": _key(record), "created": record.get("created", ""),
        "record": path, "per_image": (Path(path).parent / record["per_image"]).as_posix() if path and record.get("per_image") else None,
    }
    return row


def frame(records: list[dict[str, Any]], paths: list[str | None] | None = None) -> pd.DataFrame:
    """The runs as a DataFrame (row i = ``records[i]``), each named so that distinct configurations never share a name."""
    paths = paths or [None] * len(records)
    rows = [run_row(r, p) for r, p in zip(records, paths)]
    cells = [(run_name(r), (*(row[k] for k in SECTION), row["category"]), row["config_key"], r.get("config", {}))
             for r, row in zip(records, rows)]
    names = distinct_names(cells)
    for row in rows:
        name = names[row["config_key"]]
        row["name"], row["variant"] = name, name[len(row["method"]) + 2:-1] or None
    every = run_row({"method": None, "backbone": None, "dataset": None, "category": None, "image_size": None})  # the columns, also of no run
    return pd.DataFrame(rows, columns=["name", "method", "variant", *(c for c in every if c != "method")])


def load(results_dir: str | Path) -> pd.DataFrame:
    """Every run record under ``results_dir/records`` as a tidy DataFrame: a row per run with config columns
    (name, method, variant, backbone, dataset, category, image_size, seed, setting, ...), metrics, their 95%
    CIs (``<metric>_ci_low/_high``), cost columns, and the record's path relative to ``results_dir``."""
    found = read_records(Path(results_dir))
    return frame([r for _, r in found], [p.relative_to(results_dir).as_posix() for p, _ in found])


def current(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs the leaderboard counts: per configuration and seed the newest record (a rerun replaces its run)."""
    return runs.sort_values("created", kind="stable").drop_duplicates([*REPLICATE, "seed"], keep="last").sort_index()


def _join(values: pd.Series) -> str:
    return ", ".join(str(v) for v in sorted(values.dropna().unique()))


def leaderboard(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration and category over :func:`current` runs: each metric's mean, std over seeds
    (ddof 1), its 95% CI when a single seed carries one, seeds, and mean cost."""
    rows = []
    for _, group in current(runs).groupby(REPLICATE, sort=False):
        first = group.iloc[0]
        row: dict[str, Any] = {c: first[c] for c in [*SECTION, "name", "method", "variant", "category", "group", "degrade",
                                                     "n_train", "n_test", "data_digest"]}
        row |= {"devices": _join(group.device_name), "n_seeds": len(group), "seeds": _join(group.seed)}
        for metric in METRICS:
            values = group[metric]
            single = len(group) == 1
            row |= {metric: values.mean(skipna=False), f"{metric}_std": values.std(ddof=1) if not single else np.nan,
                    f"{metric}_ci_low": first[f"{metric}_ci_low"] if single else np.nan,
                    f"{metric}_ci_high": first[f"{metric}_ci_high"] if single else np.nan}
        row |= {c: group[c].mean(skipna=False) for c in COST if c not in ("peak_rss_bytes", "peak_gpu_bytes")}
        row |= {c: group[c].max() for c in ("peak_rss_bytes", "peak_gpu_bytes")}
        row |= {"bank_shape": first.bank_shape, "loaded": bool(group.loaded.any()), "cached_fit": bool(group.cached_fit.any()),
                "cached_test": bool(group.cached_test.any()), "config_key": first.config_key, "config_hashes": _join(group.config_hash)}
        rows.append(row)
    board = pd.DataFrame(rows)
    return board.sort_values([*SECTION, "name", "category"], kind="stable").reset_index(drop=True) if rows else board
