"""Per-image tables: every metric of a record recomputed from the table alone (pixel metrics within the
stated binning tolerance), whole images resampled by weights, and the table a run writes beside its record."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_overrides
from scipy import ndimage
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
)
from test_metrics import random_case, reference_aupro

from adbench.errors import DataError
from adbench.metrics import assess, read_per_image, table_metrics, table_per_defect
from adbench.metrics.per_image import TOLERANCES, per_image_table
from adbench.metrics.suite import NO_MAPS
from adbench.metrics.registry import IMAGE_METRICS, PIXEL_METRICS
from adbench.metrics.weighted import WeightedMetrics

TOLERANCE = 1.2e-3  # binned pixel metrics vs exact: the largest gap measured, pixel AP on these small maps (per_image.TOLERANCE: real tables)


def realistic_case(seed: int, n: int = 24, size: int = 64):
    """Smooth noise maps (as blurred patch scores are) with blurred defects of several sizes in the second half."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n // 2, n):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(8, size - 8, 2)
            ry, rx = rng.uniform(1.5, 9, 2)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    noise = ndimage.gaussian_filter(rng.normal(size=masks.shape), (0, 2, 2))
    maps = (noise / noise.std() + 2.5 * ndimage.gaussian_filter(masks.astype(float), (0, 2, 2))).astype(np.float32)
    labels = np.arange(n) >= n // 2
    scores = maps.reshape(n, -1).max(1) + 0.3 * rng.normal(size=n)
    defects = ["good" if not label else ("crack", "hole")[i % 2] for i, label in enumerate(labels)]
    return labels, scores, maps, masks, [f"test/{d}/{i:03d}.png" for i, d in enumerate(defects)], defects


@pytest.mark.parametrize("seed", range(3))
def test_table_recomputes_the_record_metrics(seed: int) -> None:
    labels, scores, maps, masks, paths, defects = realistic_case(seed)
    found = assess(labels, scores, paths, defects, masks, maps)
    exact, again = found.fields["metrics"], table_metrics(found.table)
    for metric in IMAGE_METRICS:
        assert again[metric] == pytest.approx(exact[metric], abs=1e-12), metric
    for metric in PIXEL_METRICS:
        assert again[metric] == pytest.approx(exact[metric], abs=TOLERANCE), metric
    assert exact["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert exact["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)
    by_type = table_per_defect(found.table)
    for defect, expected in found.fields["per_defect"].items():
        assert by_type[defect]["n"] == expected["n"]
        assert by_type[defect]["image_auroc"] == pytest.approx(expected["image_auroc"], abs=1e-12)
        assert by_type[defect]["aupro"] == pytest.approx(expected["aupro"], abs=TOLERANCE)


def test_weights_count_whole_images() -> None:
    """A row of weights = the images repeated that often: checked against scikit-learn and the reference AUPRO on
    explicitly repeated maps (7 score levels, so every level has its own bin and the binned metrics are exact)."""
    maps, masks = random_case(2, n=8, size=20, levels=7)
    labels = masks.any((1, 2))
    scores = np.random.default_rng(0).random(8) + labels
    table = per_image_table([str(i) for i in range(8)], labels, ["x" if l else "good" for l in labels], scores, maps, masks)
    counts = np.array([2, 0, 1, 3, 1, 0, 2, 1])
    got = {m: v[0] for m, v in WeightedMetrics(table)(counts[None]).items()}
    rep_maps, rep_masks = np.repeat(maps, counts, axis=0), np.repeat(masks, counts, axis=0)
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(rep_masks.ravel(), rep_maps.ravel()), abs=1e-12)
    precision, recall, _ = precision_recall_curve(rep_masks.ravel(), rep_maps.ravel())
    assert got["pixel_f1_max"] == pytest.approx((2 * precision * recall / np.maximum(precision + recall, 1e-12)).max(), abs=1e-12)
    assert got["aupro"] == pytest.approx(reference_aupro(rep_maps, rep_masks), abs=1e-9)
    assert got["image_auroc"] == pytest.approx(roc_auc_score(labels, scores, sample_weight=counts), abs=1e-12)
    assert got["image_ap"] == pytest.approx(average_precision_score(labels, scores, sample_weight=counts), abs=1e-12)


def test_round_trip_through_parquet(tmp_path) -> None:
    labels, scores, maps, masks, paths, defects = realistic_case(4, n=10)
    found = assess(labels, scores, paths, defects, masks, maps)
    record = tmp_path / "mvtec_bottle_patchcore_0123456789ab.json"
    name = found.write_beside(record)
    assert name == "mvtec_bottle_patchcore_0123456789ab.per_image.parquet"
    table = read_per_image(tmp_path / name)
    assert table.attrs["bin_edges"] == found.table.attrs["bin_edges"]
    assert table[["path", "label", "defect", "score"]].equals(found.table[["path", "label", "defect", "score"]])
    assert table_metrics(table) == table_metrics(found.table)
    plain = pd.read_parquet(tmp_path / name)  # any pandas reader: histograms as arrays, attrs restored
    assert list(plain["path"]) == paths and plain.attrs["format"] == found.table.attrs["format"]
    assert np.array_equal(np.stack(plain["normal_hist"]), np.stack(found.table["normal_hist"]))


def test_unreadable_or_foreign_tables_name_the_file(tmp_path) -> None:
    foreign = tmp_path / "other.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(foreign)
    with pytest.raises(DataError, match="other.parquet"):
        read_per_image(foreign)
    with pytest.raises(DataError, match="missing.parquet"):
        read_per_image(tmp_path / "missing.parquet")


def test_image_level_run_has_null_pixel_metrics_with_reasons() -> None:
    labels, scores, _, masks, paths, defects = realistic_case(5, n=12)
    found = assess(labels, scores, paths, defects, masks, None, pixel_absent=NO_MAPS)
    fields = found.fields
    assert all(fields["metrics"][m] is None and fields["ci95"][m] is None for m in PIXEL_METRICS)
    assert {m: fields["metrics_undefined"][m] for m in PIXEL_METRICS} == dict.fromkeys(PIXEL_METRICS, NO_MAPS)
    assert "normal_hist" not in found.table.columns and table_metrics(found.table)["pixel_auroc"] is None
    assert fields["per_defect"]["crack"]["aupro"] is None and fields["per_defect"]["crack"]["image_auroc"] is not None


def test_run_writes_the_table_beside_its_record(tmp_path) -> None:
    record = run_overrides(["dataset=synthetic", f"dataset.root={tmp_path / 'data'}", "dataset.size=64", "dataset.resize=64",
                            "dataset.crop=64", "dataset.n_train=6", "device=cpu", "method.coreset_ratio=0.25"], tmp_path / "results")
    (record_file,) = (tmp_path / "results" / "records").glob("*.json")
    saved = json.loads(record_file.read_text())
    assert saved["per_image"] == record["per_image"] == f"{record_file.stem}.per_image.parquet"
    table = read_per_image(record_file.parent / saved["per_image"])
    assert len(table) == saved["n_test"] and not table["path"].str.startswith("/").any()
    again = table_metrics(table)
    for metric, value in saved["metrics"].items():
        assert again[metric] == pytest.approx(value, abs=TOLERANCE), metric
    assert saved["metrics_undefined"] == {} and saved["bootstrap"]["resamples"] == 1000
    for metric, (low, high) in saved["ci95"].items():
        assert low <= high, metric


def test_committed_tables_recompute_their_records_within_the_stated_tolerance() -> None:
    """Every committed record's pixel metrics from its per-image table alone, within what per_image.py states."""
    from pathlib import Path

    records = sorted((Path(__file__).parents[1] / "results" / "records").glob("*.json"))
    if not records:
        pytest.skip("no committed records")
    checked = 0
    for path in records:
        record = json.loads(path.read_text())
        if not record.get("per_image") or not (path.parent / record["per_image"]).exists():
            continue
        again = table_metrics(read_per_image(path.parent / record["per_image"]))
        for metric, tolerance in TOLERANCES.items():
            if record["metrics"].get(metric) is not None:
                assert again[metric] == pytest.approx(record["metrics"][metric], abs=tolerance), (path.name, metric)
                checked += 1
    assert checked > 0
