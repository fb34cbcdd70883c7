"""The metric registry is the one list of metrics: every entry reaches the record (with its interval), the
leaderboard and its CSV, and a record written before an image metric existed gets it exactly from its table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adbench.metrics import assess, confidence_intervals, evaluate, read_per_image
from adbench.metrics.intervals import METHODS
from adbench.metrics.registry import HEADLINE, IMAGE_METRICS, METRICS, PIXEL_METRICS
from adbench.results.backfill import fill
from adbench.results.records import record_problem
from adbench.results.report import write_report

COMMITTED = Path(__file__).parents[1] / "results" / "records"
# a pixel-level run and an image-level one (no masks), both committed with their per-image tables
SAMPLES = ["mvtec_bottle_padim_ec23e1b596ac.json", "elpv_mono_gaussian_ad_eac1b04f0c33.json"]


def copies(folder: Path) -> list[Path]:
    """The sample records and their tables copied to ``folder/records``."""
    (folder / "records").mkdir(parents=True)
    out = []
    for name in SAMPLES:
        source = COMMITTED / name
        if not source.is_file():
            pytest.skip(f"committed record {name} not present")
        record = json.loads(source.read_text())
        shutil.copy(source, folder / "records" / name)
        shutil.copy(COMMITTED / record["per_image"], folder / "records" / record["per_image"])
        out.append(folder / "records" / name)
    return out


def test_the_suite_fills_every_registry_metric() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(12, bool), np.ones(8, bool)]
    masks = np.zeros((20, 16, 16), bool)
    masks[12:, 4:9, 5:11] = True
    maps = rng.random((20, 16, 16)) + masks
    scores = maps.reshape(20, -1).max(1)
    assert list(evaluate(labels, scores)) == list(METRICS)
    found = assess(labels, scores, [f"{i}.png" for i in range(20)], ["good"] * 12 + ["cut"] * 8, masks, maps)
    assert list(found.fields["metrics"]) == list(found.fields["ci95"]) == list(METRICS)
    assert set(found.fields["bootstrap"]["method"]) == set(METRICS) and None not in found.fields["metrics"].values()
    image_only = assess(labels, scores, [f"{i}.png" for i in range(20)], ["good"] * 12 + ["cut"] * 8)
    assert set(image_only.fields["metrics_undefined"]) == set(PIXEL_METRICS)


def test_backfill_gives_a_record_its_image_metrics_back_exactly(tmp_path: Path) -> None:
    """Image metrics the runs computed from the images' exact scores, removed, come back equal from the tables, with
    the interval a run computes now from the record's bootstrap seed; pixel metrics are not filled (the tables are binned)."""
    paths = copies(tmp_path)
    originals = [json.loads(p.read_text()) for p in paths]
    removed = ["image_ap", "image_f1_max"]
    for path in paths:
        stripped = json.loads(path.read_text())
        for m in removed:
            for field in ("metrics", "ci95", "metrics_undefined"):
                stripped[field].pop(m, None)
            stripped["bootstrap"]["method"].pop(m)
        stripped["metrics"].pop("pixel_ap", None)
        path.write_text(json.dumps(stripped))
    filled, left = fill(tmp_path)
    newer = {p.name: {m for m in IMAGE_METRICS if m not in r["metrics"]} for p, r in zip(paths, originals)}  # none once migrated
    assert left == [] and {p.name: set(names) for p, names in filled} == {p.name: {*removed, *newer[p.name]} for p in paths}
    for path, original in zip(paths, originals):
        record = json.loads(path.read_text())
        assert record_problem(path, record) is None and "pixel_ap" not in record["metrics"] and set(IMAGE_METRICS) <= set(record["metrics"])
        fresh = confidence_intervals(read_per_image(path.parent / record["per_image"]), seed=record["bootstrap"]["seed"])
        for m in removed:
            assert record["metrics"][m] == pytest.approx(original["metrics"][m], rel=1e-12), (path.name, m)
            assert record["ci95"][m] == fresh[m] and record["bootstrap"]["method"][m] == METHODS[m], (path.name, m)
    assert fill(tmp_path) == ([], [])  # nothing left to fill: rerunning is safe


def test_every_registry_metric_reaches_the_leaderboard_and_its_csv(tmp_path: Path) -> None:
    copies(tmp_path)
    text = write_report(tmp_path, tmp_path / "LEADERBOARD.md").read_text()
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    for metric in METRICS:
        assert {metric, f"{metric}_ci_low", f"{metric}_ci_high"} <= set(board.columns), metric
    for metric in HEADLINE:
        assert f"**{metric.label} (%)**" in text or f"**{metric.label}**: not applicable" in text, metric.label
