"""method=anomalib: an anomalib 2.x model in adbench's harness, and its paired comparison with adbench's own method.

Without the ``compare`` extra the method is one error line (exit 2); with it (pip install -e ".[compare]") an
anomalib Patchcore runs on synthetic data through the runner and the leaderboard pairs it with adbench's
PatchCore on the same images. The pairing's numbers are checked against sklearn and a direct O(m n)
implementation of DeLong et al. (1988)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_overrides
from scipy import stats
from sklearn.metrics import roc_auc_score

from adbench.metrics.per_image import per_image_table, read_per_image
from adbench.results.implementations import comparison_rows
from adbench.results.report import write_report
from adbench.results.table import current, frame

TINY = ["dataset=synthetic", "dataset.size=64", "dataset.resize=64", "dataset.crop=64", "dataset.n_train=8", "dataset.n_test=8", "device=cpu"]
INSTALL = 'pip install -e ".[compare]"'


def test_without_anomalib_the_method_is_one_line_with_exit_2(tmp_path) -> None:
    # anomalib made unimportable in a fresh interpreter (sys.modules[name] = None: "import anomalib" raises ImportError)
    code = ("import sys; sys.modules['anomalib'] = None; sys.modules['anomalib.models'] = None; "
            "from adbench.__main__ import main; main()")
    args = ["method=anomalib", "method.model=Patchcore", *TINY, f"dataset.root={tmp_path / 'data'}", f"results_dir={tmp_path / 'res'}"]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and INSTALL in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "res" / "records").exists()


def delong_reference(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> float:
    """Two-sided p of AUROC(a) = AUROC(b) from DeLong's structural components, computed pair by pair."""
    pos, neg = labels == 1, labels == 0

    def psi(s: np.ndarray) -> np.ndarray:
        x, y = s[pos][:, None], s[neg][None, :]
        return (x > y) + 0.5 * (x == y)

    kernels = [psi(a), psi(b)]
    v10 = np.stack([k.mean(1) for k in kernels])  # per anomalous image
    v01 = np.stack([k.mean(0) for k in kernels])  # per normal image
    s = np.cov(v10) / pos.sum() + np.cov(v01) / neg.sum()
    z = (kernels[0].mean() - kernels[1].mean()) / np.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    return float(2 * stats.norm.sf(abs(z)))


def _record(method: str, name: str, seed: int = 0, degrade: str | None = None, model: str | None = None) -> dict:
    config = {"method": {"name": method, **({"model": model} if model else {})}, "seed": seed, "degrade": degrade}
    return {"method": method, "backbone": "net", "dataset": "toy", "category": "c", "image_size": 64, "seed": seed,
            "degrade": degrade, "config": config, "metrics": {}, "per_image": f"{name}.per_image.parquet",
            "fit_info": {"anomalib_version": "2.7.0"} if model else {}, "created": "2026-12-04T00:00:00"}


def test_pairs_anomalib_with_adbench_on_the_same_images_only() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(30, int), np.ones(40, int)]
    theirs, ours = labels + rng.normal(0, 1.0, 70), labels + rng.normal(0, 0.8, 70)
    paths = [f"img{i}.png" for i in range(70)]
    table = {"anomalib": per_image_table(paths, labels, ["good"] * 70, theirs), "patchcore": per_image_table(paths, labels, ["good"] * 70, ours),
             "other_images": per_image_table([f"x{i}.png" for i in range(70)], labels, ["good"] * 70, ours)}
    table["patchcore_seed1"] = table["patchcore_noisy"] = table["patchcore"]
    records = [_record("anomalib", "anomalib", model="Patchcore"), _record("patchcore", "patchcore"),
               _record("patchcore", "other_images", seed=0) | {"config": {"method": {"name": "patchcore", "k": 1}, "seed": 0}},
               _record("patchcore", "patchcore_seed1", seed=1),  # another seed: not paired with the seed-0 anomalib run
               _record("patchcore", "patchcore_noisy", degrade="noise:3")]  # degraded test images: not paired
    runs = frame(records, [f"records/{r['per_image'].split('.')[0]}.json" for r in records])
    rows = comparison_rows(current(runs), records, lambda name: table[Path(name).name.split(".")[0]])
    assert len(rows) == 2  # the same-seed clean patchcore runs: one on the same images, one on others
    same, other = rows
    expected = roc_auc_score(labels, theirs) - roc_auc_score(labels, ours)
    assert same["anomalib"].endswith("anomalib 2.7.0") and same["test images"] == "70"
    assert same["ΔI-AUROC [95% CI]"].startswith(f"{100 * expected:+.2f} [")
    low, high = (float(x) for x in same["ΔI-AUROC [95% CI]"].split("[")[1].rstrip("]").split(","))
    assert low < 100 * expected < high
    assert float(same["DeLong p"]) == pytest.approx(delong_reference(theirs, ours, labels), rel=1e-3)
    assert "not compared" in other["ΔI-AUROC [95% CI]"] and "different test images" in other["ΔI-AUROC [95% CI]"]


@pytest.fixture(scope="module")
def anomalib():
    return pytest.importorskip("anomalib", reason=f"method=anomalib needs the compare extra: {INSTALL}")


def test_anomalib_uses_adbench_backbone_weights(anomalib) -> None:
    from adbench.features.backbones import Backbone
    from adbench.methods import method_class

    backbone = Backbone("tf_efficientnet_lite0", ["blocks.2", "blocks.4"])
    model = method_class("anomalib")(backbone, ["blocks.2", "blocks.4"], model="Patchcore")
    images = torch.randn(2, 3, 64, 64)
    theirs = model.model.feature_extractor(images)  # anomalib's TimmFeatureExtractor
    ours = backbone(images)
    for layer in ("blocks.2", "blocks.4"):  # adbench runs the network with its BatchNorms folded: rounding apart
        torch.testing.assert_close(theirs[layer], ours[layer], rtol=0, atol=1e-5 * float(ours[layer].abs().max()))


def test_anomalib_patchcore_runs_through_the_harness_and_is_paired_with_adbench(anomalib, tmp_path) -> None:
    data = [*TINY, f"dataset.root={tmp_path / 'data'}"]
    record = run_overrides(["method=anomalib", "method.model=Patchcore", *data], tmp_path)
    ours = run_overrides(["method=patchcore", "method.coreset_ratio=0.1", "method.embed_dim=null", "method.reweight=true", *data], tmp_path)
    assert record["method"] == "anomalib" and record["config"]["method"]["model"] == "Patchcore"
    assert record["fit_info"]["anomalib_version"] == anomalib.__version__ and record["fit_info"]["anomalib_model"] == "Patchcore"
    assert any(anomalib.__version__ in line for line in record["deviations"])
    bank = record["memory_bank"]["shape"]  # 10% of the 8 x 8 x 8 stride-8 patches, blocks.2 + blocks.4 channels (40 + 112)
    assert bank == [round(0.1 * 8 * 8 * 8), 152]
    table = read_per_image(tmp_path / "records" / record["per_image"])
    assert len(table) == record["n_test"] == 16 and "normal_hist" in table  # 8 normal + 8 anomalous
    assert record["metrics"]["image_auroc"] == pytest.approx(roc_auc_score(table["label"], table["score"]))
    assert record["metrics"]["image_auroc"] >= 0.9  # the painted defects are found
    report = write_report(tmp_path).read_text()
    section = report[report.index("## anomalib vs adbench"):]
    row = next(line for line in section.splitlines() if line.startswith("| stripes"))
    theirs_table, ours_table = table, read_per_image(tmp_path / "records" / ours["per_image"])
    ours_table = ours_table.set_index("path").loc[theirs_table["path"]]
    delta = roc_auc_score(theirs_table["label"], theirs_table["score"]) - roc_auc_score(ours_table["label"], ours_table["score"])
    same = f"{100 * delta:+.2f} (the same in every resample)"  # both at the same AUROC in every resample: no interval
    assert (f"{100 * delta:+.2f} [" in row or same in row) and "anomalib 2.7.0" in row
