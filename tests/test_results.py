"""Results: portable records named by their data, the DataFrame, row names, seed aggregation, ties,
rank tests against Demšar (2006), and the leaderboard files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_config, run_overrides
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

import adbench.results
from adbench.data.splits import split_digest
from adbench.data.sources import load_folder, make_synthetic
from adbench.results.naming import run_name
from adbench.results.records import config_hash, portable_path
from adbench.results.report import render, write_report
from adbench.results.stats import complete_blocks, nemenyi_cd, rank_test
from adbench.results.table import leaderboard


def record(overrides: list[str] = (), category: str = "bottle", seed: int = 0, created: str = "2026-01-01T00:00:00",
           image_auroc: float | None = 0.9, pixel_auroc: float | None = 0.95, aupro: float | None = 0.8, **fields) -> dict:
    """A run record as the runner writes it, around the real composed config of ``overrides``."""
    cfg = make_config(["dataset=mvtec", f"dataset.category={category}", f"seed={seed}", *overrides])
    config = OmegaConf.to_container(cfg, resolve=True)
    config["dataset"]["digest"] = f"files-of-{category}"
    out = {
        "method": cfg.method.name, "backbone": cfg.backbone.name, "weights": "test", "dataset": "mvtec", "category": category,
        "group": "objects", "image_size": 224, "resize": 256, "seed": seed, "degrade": None, "created": created, "device": "cpu",
        "device_name": "cpu", "n_train": 20, "n_test": 10, "fit_seconds": 1.0, "peak_rss_bytes": 2**30,
        "metrics": {"image_auroc": image_auroc, "pixel_auroc": pixel_auroc, "aupro": aupro},
        "throughput": {"model_images_per_s": 10.0, "end_to_end_images_per_s": 8.0}, "memory_bank": {"shape": [10, 4], "bytes": 160},
        "config": config, "config_hash": config_hash(config),
    }
    return out | fields


def write_records(folder: Path, records: list[dict]) -> None:
    (folder / "records").mkdir(parents=True)
    for i, r in enumerate(records):
        (folder / "records" / f"r{i:02d}.json").write_text(json.dumps(r))


# --- portable records -------------------------------------------------------------------------------------------

def test_split_digest_names_the_files_not_the_folder(tmp_path):
    make_synthetic(tmp_path / "a", n_train=3, n_test=2, size=32)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a, b = load_folder(str(tmp_path / "a"), "stripes"), load_folder(str(tmp_path / "b"), "stripes")
    assert split_digest(a) == split_digest(b)
    image = b.train[0].image
    image.write_bytes(image.read_bytes() + b"\0")  # another copy of the data: one file one byte longer
    assert split_digest(load_folder(str(tmp_path / "b"), "stripes")) != split_digest(a)
    image.rename(image.with_name("zz.png"))
    assert split_digest(load_folder(str(tmp_path / "b"), "stripes")) != split_digest(a)


def test_portable_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("ADBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path / "..")
    assert portable_path(tmp_path / "data" / "mvtec") == "$ADBENCH_DATA/mvtec"
    assert portable_path(tmp_path / "results") == f"{tmp_path.name}/results"
    assert portable_path(Path.home() / "x" / "y") == "~/x/y" and portable_path("relative/path") == "relative/path"
    monkeypatch.chdir("/")
    assert portable_path("/opt/somewhere/models") == "…/models"


def test_same_data_elsewhere_reuses_the_record_other_data_does_not(tmp_path):
    """The config hash holds the data's file digest, not its folder; records hold no absolute path."""
    for copy in ("a", "b"):
        make_synthetic(tmp_path / copy, n_train=4, n_test=2, size=32)
    common = ["dataset=folder", "dataset.category=stripes", "dataset.resize=32", "dataset.crop=32", "batch_size=8", "method.coreset_ratio=0.5"]
    first = run_overrides([*common, f"dataset.root={tmp_path / 'a'}"], tmp_path / "results")
    again = run_overrides([*common, f"dataset.root={tmp_path / 'b'}"], tmp_path / "results")
    assert again["config_hash"] == first["config_hash"] and again["created"] == first["created"]  # not rerun
    (tmp_path / "b" / "stripes" / "train" / "good" / "000.png").unlink()
    other = run_overrides([*common, f"dataset.root={tmp_path / 'b'}"], tmp_path / "results")
    assert other["config_hash"] != first["config_hash"] and other["n_train"] == first["n_train"] - 1
    texts = [p.read_text() for p in (tmp_path / "results" / "records").glob("*.json")]
    assert len(texts) == 2 and not any(str(tmp_path) in t or "/tmp/" in t for t in texts)
    assert first["config"]["dataset"]["root"] == "…/a" and len(first["config"]["dataset"]["digest"]) == 16


# --- names, the DataFrame, seeds -------------------------------------------------------------------------------

def test_row_names_say_what_differs_from_the_method_defaults():
    assert run_name(record(["method=patchcore"])) == "patchcore"
    assert run_name(record(["method=patchcore", "method.coreset_ratio=0.2"])) == "patchcore [coreset_ratio=0.2]"
    assert run_name(record(["method=patchcore"], seed=3)) == "patchcore", "a seed is a replicate, not a variant"
    assert run_name(record(["method=padim", "backbone=resnet18"])) == "padim", "defaults resolve against the run's backbone"
    assert run_name(record(["method=padim", "method.layers=[blocks.1]"])) == "padim [layers=[blocks.1]]"
    assert run_name(record(["method=patchcore", "tag=mine"], degrade="blur:5")) == "patchcore [mine; blur:5]"
    assert run_name(record(["method=spade"], deviations=["plain distances"])) == "spade [≠paper]"


def test_load_returns_one_tidy_row_per_record(tmp_path):
    records = [record(["method=patchcore"], seed=s, image_auroc=0.9 + s / 100, aupro=None, ci95={"image_auroc": [0.8, 0.95]})
               for s in range(2)]
    write_records(tmp_path, records + [record(["method=padim"], category="cable")])
    runs = adbench.results.load(tmp_path)
    assert len(runs) == 3 and list(runs.record) == [f"records/r{i:02d}.json" for i in range(3)]
    for column in ("name", "method", "variant", "backbone", "dataset", "category", "image_size", "seed", "setting",
                   "image_auroc", "pixel_auroc", "aupro", "image_auroc_ci_low", "fit_seconds", "model_images_per_s", "bank_bytes"):
        assert column in runs.columns, column
    assert runs.image_auroc.tolist() == pytest.approx([0.9, 0.91, 0.9]) and runs.aupro.isna().tolist() == [True, True, False]
    assert runs.image_auroc_ci_low.iloc[0] == 0.8 and np.isnan(runs.image_auroc_ci_low.iloc[2])
    assert set(runs.setting) == {"full"} and runs.variant.isna().all()


def test_every_configuration_is_a_row_and_seeds_aggregate():
    values = [0.90, 0.93, 0.95]
    records = [record(["method=patchcore"], seed=s, image_auroc=v, created=f"2026-01-02T00:00:0{s}") for s, v in enumerate(values)]
    records += [record(["method=patchcore"], seed=0, image_auroc=0.10, created="2026-01-01T00:00:00"),  # replaced by the rerun
                record(["method=patchcore", "method.coreset_ratio=0.2"], image_auroc=0.80),
                record(["method=patchcore", "method.coreset_ratio=0.2"], category="cable", image_auroc=0.70)]
    board = leaderboard(adbench.results.table.frame(records)).set_index(["name", "category"])
    assert sorted(board.index) == [("patchcore", "bottle"), ("patchcore [coreset_ratio=0.2]", "bottle"), ("patchcore [coreset_ratio=0.2]", "cable")]
    row = board.loc[("patchcore", "bottle")]
    assert row.n_seeds == 3 and row.seeds == "0, 1, 2"
    assert row.image_auroc == pytest.approx(np.mean(values)) and row.image_auroc_std == pytest.approx(np.std(values, ddof=1))
    text = render(records, "records")
    assert "from 6 run records in `records` (1 replaced by a newer run of the same configuration and seed)" in text
    assert f"**{100 * np.mean(values):.1f}** ± {100 * np.std(values, ddof=1):.1f} (n=3)" in text  # the best of its column


def test_best_is_bold_and_rows_without_tables_are_marked_untested():
    """Records without per-image tables: the best is still bold, the others carry the 'not tested' mark (never a bare
    number that could read as 'significantly worse'), and their seeds show as ± std."""
    runs = {"patchcore": [0.90, 0.92, 0.94], "padim": [0.89, 0.91, 0.93], "spade": [0.70, 0.705, 0.71]}
    records = [record([f"method={m}"], seed=s, image_auroc=v) for m, values in runs.items() for s, v in enumerate(values)]
    board = leaderboard(adbench.results.table.frame(records))
    from adbench.results.stats import mark_ties

    marked = mark_ties(board, adbench.results.table.current(adbench.results.table.frame(records))).set_index("name")
    assert marked.image_auroc_best.to_dict() == {"padim": False, "patchcore": True, "spade": False}
    assert not marked.image_auroc_tested.any() and not marked.image_auroc_worse.any() and not marked.image_auroc_tie.any()
    text = render(records, "records")
    assert "**92.0** ± 2.0 (n=3)" in text and "?91.0 ± 2.0 (n=3)" in text and "| ?70.5 ± 0.5 (n=3) " in text
    assert "? not tested" in text and "step-down max-T" in text and "Newcombe" in text


# --- across categories and datasets -----------------------------------------------------------------------------

# Demšar (2006), Table 6: AUC of C4.5 variants on 14 data sets. "0.97501" breaks the voting tie as the paper's ranks do.
DEMSAR = np.array([
    [0.763, 0.768, 0.771, 0.798], [0.599, 0.591, 0.590, 0.569], [0.954, 0.971, 0.968, 0.967], [0.628, 0.661, 0.654, 0.657],
    [0.882, 0.888, 0.886, 0.898], [0.936, 0.931, 0.916, 0.931], [0.661, 0.668, 0.609, 0.685], [0.583, 0.583, 0.563, 0.625],
    [0.775, 0.838, 0.866, 0.875], [1.000, 1.000, 1.000, 1.000], [0.940, 0.962, 0.965, 0.962], [0.619, 0.666, 0.614, 0.669],
    [0.972, 0.981, 0.97501, 0.975], [0.957, 0.978, 0.946, 0.970],
])
DEMSAR_NAMES = ["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"]


def demsar_board() -> pd.DataFrame:
    rows = [{"name": name, "backbone": "b", "dataset": "uci", "category": f"set{i:02d}", "image_size": 0, "setting": "full",
             "degrade": None, "image_auroc": DEMSAR[i, j]} for i in range(len(DEMSAR)) for j, name in enumerate(DEMSAR_NAMES)]
    return pd.DataFrame(rows)


def test_friedman_and_nemenyi_reproduce_demsar_2006():
    test = rank_test(demsar_board(), "image_auroc")
    assert test.ranks.round(3).to_dict() == {"C4.5+m+cf": 1.964, "C4.5+m": 2.0, "C4.5+cf": 2.893, "C4.5": 3.143}  # as printed
    assert round(test.cd, 2) == 1.25  # "CD = 2.569 sqrt(4*5 / (6*14)) = 1.25"
    assert round(test.statistic, 2) == 9.28 and round(test.f_statistic, 2) == 3.69  # "χ²_F = 9.28", "F_F = 3.69"
    assert test.p_value < 0.05 and test.distribution == "Iman-Davenport F distribution"  # the paper rejects (F_F = 3.69 > 2.85)
    off_diagonal = test.posthoc.to_numpy()[~np.eye(4, dtype=bool)]
    assert (off_diagonal > 0.05).all(), "the paper: Nemenyi is not powerful enough to detect any difference here"


def test_nemenyi_critical_values_match_demsar_table_5():
    q_005 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}
    for k, q in q_005.items():
        assert nemenyi_cd(k, 10) / np.sqrt(k * (k + 1) / 60) == pytest.approx(q, abs=1e-3)


def test_rank_test_keeps_the_configurations_run_on_every_block():
    table = pd.DataFrame({"A": [0.9, 0.8, 0.7, np.nan], "B": [0.8, 0.7, 0.6, 0.5], "C": [0.7, 0.6, 0.5, 0.4], "D": [np.nan, np.nan, np.nan, 0.9]},
                         index=["b1", "b2", "b3", "b4"])
    kept = complete_blocks(table)
    assert list(kept.columns) == ["A", "B", "C"] and list(kept.index) == ["b1", "b2", "b3"]
    assert "needs at least 3 configurations" in rank_test(demsar_board().query("name != 'C4.5' and name != 'C4.5+cf'"), "image_auroc")


# --- the files -------------------------------------------------------------------------------------------------

def test_report_files_uncertainty_defects_and_cd_diagram(tmp_path):
    methods = {"patchcore": 0.95, "padim": 0.90, "spade": 0.85}
    records = [record([f"method={m}"], category=c, image_auroc=v - 0.01 * i, ci95={"image_auroc": [v - 0.05, min(1.0, v + 0.03)]},
                      per_defect={"crack": {"n": 5, "image_auroc": v, "aupro": 0.7}, "scratch": {"n": 3, "image_auroc": v - 0.1, "aupro": None}})
               for m, v in methods.items() for i, c in enumerate(["bottle", "cable", "screw"])]
    records.append(record(["method=fcdd"], image_auroc=0.5, pixel_auroc=None, aupro=None))  # an old record: no CI, no per-defect
    write_records(tmp_path, records)
    text = write_report(tmp_path).read_text()
    assert "**95.0** [90.0, 98.0]" in text and "| fcdd " in text and "| ?50.0 " in text  # no per-image tables: not tested
    assert "| method    | crack (n=5)   | scratch (n=3)   |" in text and "| patchcore | 95.0 / 70.0   | 85.0 / n/a      |" in text
    assert "Friedman χ² = 6.00" in text  # three blocks, same order everywhere: χ² = 12N/(k(k+1)) Σ R² - 3N(k+1) = 6
    assert f"p = {1 / 36:.3g} (exact permutation distribution)" in text  # 6 of the 6³ arrangements agree fully; it rejects
    assert "**P-AUROC**: no rank test (all 3 configurations score the same on every block)" in text
    (diagram,) = (tmp_path / "plots").glob("*critical*image_auroc*.png")
    assert diagram.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"(plots/{diagram.name})" in text
    csv, parquet = pd.read_csv(tmp_path / "leaderboard.csv"), pd.read_parquet(tmp_path / "leaderboard.parquet")
    assert len(csv) == len(parquet) == 10 and set(csv.name) == {"patchcore", "padim", "spade", "fcdd"}
    assert csv.set_index(["name", "category"]).at[("padim", "cable"), "image_auroc"] == pytest.approx(0.89)
    outputs = [text, (tmp_path / "leaderboard.csv").read_text()]
    assert not any(str(tmp_path) in t for t in outputs)


def test_ties_from_the_paired_per_image_test(tmp_path):
    """One seed each: the tie marks come from DeLong's joint covariance of the per-image tables the metrics side writes."""
    from adbench.metrics.compare import paired
    from adbench.metrics.per_image import read_per_image
    from adbench.metrics.suite import assess

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(60, int), np.ones(60, int)]
    paths, defects = [f"test/{i:03d}.png" for i in range(120)], ["good" if not y else "crack" for y in labels]
    signal = labels + rng.normal(0, 0.6, 120)
    scores = {"patchcore": signal, "padim": signal + rng.normal(0, 0.05, 120), "spade": rng.normal(0, 1, 120)}
    (tmp_path / "records").mkdir()
    for i, (method, s) in enumerate(scores.items()):
        found = assess(labels, s, paths, defects)
        r = record([f"method={method}"]) | found.fields
        path = tmp_path / "records" / f"r{i}.json"
        r["per_image"] = found.write_beside(path)
        path.write_text(json.dumps(r))
    text = write_report(tmp_path).read_text()
    board = pd.read_csv(tmp_path / "leaderboard.csv").set_index("name")
    auroc = {m: roc_auc_score(labels, s) for m, s in scores.items()}  # padim 0.891 > patchcore 0.887 >> spade 0.554
    assert board.image_auroc.to_dict() == pytest.approx(auroc) and board.image_auroc_best.to_dict() == {m: m == "padim" for m in auroc}
    assert board.at["patchcore", "image_auroc_tie"] and not board.at["spade", "image_auroc_tie"] and board.at["spade", "image_auroc_worse"]
    tables = {m: read_per_image(tmp_path / "records" / f"r{i}.per_image.parquet") for i, m in enumerate(scores)}
    raw = {m: paired(tables["padim"], tables[m], "image_auroc")["p_value"] for m in ("patchcore", "spade")}
    assert board.at["spade", "image_auroc_p_vs_best"] < 0.05 < board.at["patchcore", "image_auroc_p_vs_best"]
    assert board.at["patchcore", "image_auroc_p_vs_best"] >= raw["patchcore"] - 0.01  # adjusted for the three pairs: never smaller
    assert f"≈{100 * auroc['patchcore']:.1f} [" in text and f"**{100 * auroc['padim']:.1f}** [" in text and f"↓{100 * auroc['spade']:.1f} [" in text


def test_paper_comparison_averages_the_seeds_first():
    from adbench.results.paper_numbers import compare, load_paper_numbers

    runs = [record(["method=patchcore"], seed=s, image_auroc=v) for s, v in ((0, 0.98), (1, 1.0))]
    (pair,) = [p for p in compare(runs, load_paper_numbers()) if p["number"].table == "Table 4" and p["number"].metric == "image_auroc"]
    assert pair["measured"] == pytest.approx(99.0) and pair["difference"] == pytest.approx(99.0 - pair["number"].value)
