"""adbench-import: scores exported from a run's per-image table (and maps from its saved model) come back as a
record with the run's metrics and CIs; bad CSVs get one line per problem, exit 2, and nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from PIL import Image

import adbench
from adbench.importer import import_scores
from adbench.metrics.per_image import read_per_image
from adbench.metrics.registry import METRICS
from adbench.results import load

REPO = Path(__file__).resolve().parent.parent


def import_config(overrides: list[str]):
    with initialize_config_module("adbench.conf", version_base=None):
        return compose("import", overrides=overrides)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A PaDiM run on synthetic data (model saved), its scores as a CSV and its maps (from the saved model) as .npy."""
    root = tmp_path_factory.mktemp("import")
    old = Path.cwd()
    os.chdir(root)
    try:
        result = adbench.run(method="padim", dataset="synthetic", dataset__root=str(root / "data"), figures=0, save_model="padim.safetensors")
        maps = adbench.load_model("padim.safetensors").predict([result.base / p for p in result.table.path]).maps
    finally:
        os.chdir(old)
    (root / "maps").mkdir()
    names = []
    for i, amap in enumerate(maps):
        names.append(f"maps/{i:03d}.npy")
        np.save(root / names[-1], amap)
    result.table[["path", "score"]].assign(map=names).to_csv(root / "scores.csv", index=False)
    result.table[["path", "score"]].to_csv(root / "scores_only.csv", index=False)
    return root, result


def test_import_reproduces_the_record_metrics_and_cis(exported, tmp_path) -> None:
    root, result = exported
    common = ["dataset=synthetic", f"dataset.root={root / 'data'}", "name=padim_export", f"results_dir={tmp_path}"]
    record_file = import_scores(import_config([f"scores={root / 'scores.csv'}", *common]))
    imported = json.loads(record_file.read_text())
    original = result.record
    assert imported["imported"]["maps"] and imported["method"] == "padim_export" and imported["n_test"] == original["n_test"]
    for metric in METRICS:  # image metrics exactly (same scores); pixel metrics from the saved model's maps of the same fit
        assert imported["metrics"][metric] == pytest.approx(original["metrics"][metric], abs=1e-6), metric
        assert imported["ci95"][metric] == pytest.approx(original["ci95"][metric], abs=1e-6), metric
    table = read_per_image(record_file.with_name(imported["per_image"]))
    pd.testing.assert_frame_equal(table[["path", "label", "defect", "score"]], result.table[["path", "label", "defect", "score"]])
    assert load(tmp_path).name.tolist() == ["padim_export [imported]"]  # it enters the results table, tagged imported
    # scores only: image metrics and CIs, pixel metrics not applicable
    only = json.loads(import_scores(import_config([f"scores={root / 'scores_only.csv'}", *common])).read_text())
    assert only["metrics"]["image_auroc"] == original["metrics"]["image_auroc"] and only["ci95"]["image_ap"] == original["ci95"]["image_ap"]
    assert only["metrics"]["pixel_auroc"] is None and "maps" in only["metrics_undefined"]["pixel_auroc"]


def test_bad_rows_are_one_line_each_and_nothing_is_written(exported, tmp_path) -> None:
    root, result = exported
    rows = pd.read_csv(root / "scores.csv")
    bad = rows.iloc[1:].copy()  # the first test image has no row
    bad.loc[bad.index[0], "path"] = "test/good/nosuch.png"  # a path not in the dataset (so its image has no row either)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    bad.loc[bad.index[1], "map"] = "small.png"  # a map of the wrong size
    bad["map"] = [m if m == "small.png" else str(root / m) for m in bad["map"]]
    bad.to_csv(tmp_path / "bad.csv", index=False)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "adbench.importer", f"scores={tmp_path / 'bad.csv'}", "name=x", "dataset=synthetic",
                           f"dataset.root={root / 'data'}", f"results_dir={tmp_path / 'res'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    first, second = result.table.path.iloc[:2]
    assert any("line 2: path 'test/good/nosuch.png' is not a test image" in line for line in lines)
    assert any("map small.png is 10x10; expected the image's 128x128" in line for line in lines)
    assert any(line.endswith(f"no row for test image {first}") for line in lines)
    assert any(line.endswith(f"no row for test image {second}") for line in lines)
    assert len(lines) == 4 and all(line.startswith("adbench-import: error: ") for line in lines) and not (tmp_path / "res").exists()
