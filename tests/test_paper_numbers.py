"""Paper numbers: transcription against the seed tables, matching to runs, formulas, leaderboard and plots."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest

from adbench.data.sources import MVTEC_CATEGORIES, MVTEC_OBJECTS, MVTEC_TEXTURES
from adbench.errors import DataError
from adbench.results.paper_numbers import MEMORY_BANK, compare, load_paper_numbers
from adbench.results.report import render, write_report

REPO = Path(__file__).resolve().parent.parent
SEEDS = Path(os.environ.get("ADBENCH_SEEDS", REPO.parent / "shared" / "seeds"))
NUMBERS = load_paper_numbers()
# the design document each paper's numbers were transcribed from (the CFA slides, reviews of ReConPatch and FCDD)
TRANSCRIBED_FROM = {"CFA, Lee et al. 2022": "002", "ReConPatch, Hyun et al. 2024": "004", "FCDD, Liznerski et al. 2021": "001"}


def seed_text(number) -> str:
    (path,) = SEEDS.glob(f"{TRANSCRIBED_FROM[number.reported_in]}_*.txt")
    return path.read_text()


@pytest.fixture(scope="module")
def seeds() -> Path:
    if not SEEDS.is_dir():
        pytest.skip(f"seed documents not found at {SEEDS} (set ADBENCH_SEEDS)")
    return SEEDS


def table_rows(text: str, title: str) -> list[list[str]]:
    """Tab-separated lines of the seed table whose caption starts with ``title``."""
    block = text[text.index(title):]
    block = block[: block.index("\n\n", block.index("\t"))]  # the table ends at the first blank line after it starts
    rows = [line.split("\t") for line in block.splitlines() if "\t" in line]
    for prev, row in zip(rows, rows[1:]):  # Table 2 leaves the metric cell blank on continuation lines
        if row[0] == "" and prev[0]:
            row[0] = prev[0]
    return rows


def test_table2_and_table4_are_transcribed_cell_by_cell(seeds):
    text = (next(seeds.glob("002_*.txt"))).read_text()
    t2 = table_rows(text, "Table 2.")
    header = t2[0][2:]
    columns = {"spade": "SPADE", "padim": "PaDiM", "patchcore": "PatchCore", "cfa": "CFA", "cfa++": "CFA++"}
    metric_label = {"image_auroc": "I-AUROC", "pixel_auroc": "P-AUROC"}
    checked = 0
    for n in (n for n in NUMBERS if n.table == "Table 2"):
        name = "cfa++" if "CFA++" in n.setting else n.method
        row = next(r for r in t2[1:] if r[0] == metric_label[n.metric] and r[1].lower() == n.category)
        assert float(row[2 + header.index(columns[name])]) == n.value, n
        checked += 1
    assert checked == 5 * 2 * 3

    t4 = {r[0].lower().replace(" ", "_"): r[1:] for r in table_rows(text, "Table 4.")[1:]}
    header4 = table_rows(text, "Table 4.")[0][1:]
    checked = 0
    for n in (n for n in NUMBERS if n.table == "Table 4"):
        name = "CFA++" if "CFA++" in n.setting else {"patchcore": "PatchCore", "cfa": "CFA"}[n.method]
        assert float(t4[n.category][header4.index(name)]) == n.value, n
        checked += 1
    assert checked == 3 * len(MVTEC_CATEGORIES)


def test_every_other_number_appears_in_its_seed(seeds):
    for n in NUMBERS:
        candidates = {f"{n.value:g}", f"{n.value:.1f}", f"{n.value:.2f}", f"{n.value / 100:g}"}
        assert any(re.search(rf"(?<![\d.]){re.escape(c)}(?![\d])", seed_text(n)) for c in candidates), n


def test_bad_rows_are_reported_with_their_line(tmp_path):
    path = tmp_path / "numbers.csv"
    header = "method,match,dataset,category,metric,value,backbone,image_size,setting,table,reported_in,note\n"
    path.write_text(header + "patchcore,,mvtec,bottle,image_auroc,99.1,WRN50-2,,,,,\npatchcore,,mvtec,bottle,f1,99.1,WRN50-2,,,,,\n")
    with pytest.raises(DataError, match=r"numbers.csv \(data row 2\).*metric 'f1'"):
        load_paper_numbers(path)
    path.write_text(header + "cfa,method.gamma_d,mvtec,all,pixel_auroc,98.4,WRN50-2,,,,,\n")
    with pytest.raises(DataError, match="not key=value"):
        load_paper_numbers(path)


def fake_record(method: str, category: str, image_auroc: float, pixel_auroc: float | None = 0.97, backbone: str = "tf_efficientnet_lite0",
                **method_config) -> dict:
    return {
        "method": method, "variant": None, "dataset": "mvtec", "category": category, "backbone": backbone, "weights": "test",
        "image_size": 224, "resize": 256, "seed": 0, "device": "cpu", "device_name": "cpu", "created": "2026-01-01T00:00:00",
        "group": "textures" if category in MVTEC_TEXTURES else "objects", "n_train": 200, "n_test": 100,
        "metrics": {"image_auroc": image_auroc, "pixel_auroc": pixel_auroc, "aupro": None},
        "throughput": {"model_images_per_s": 10.0, "end_to_end_images_per_s": 8.0},
        "memory_bank": {"shape": [100, 10], "bytes": 4000}, "fit_seconds": 1.0, "peak_rss_bytes": 2**30,
        "layers": ["blocks.2", "blocks.4"], "feature_maps": [["blocks.2", 40, 28, 28], ["blocks.4", 112, 14, 14]],
        "config": {"dataset": {"name": "mvtec", "root": None}, "method": {"name": method, **method_config}},
        "config_hash": f"{method}-{category}-{image_auroc}",
    }


def test_group_means_need_every_class_of_the_group():
    only_bottle = [fake_record("patchcore", "bottle", 0.99)]
    pairs = compare(only_bottle, NUMBERS)
    assert [(p["number"].table, p["number"].category) for p in pairs] == [("Table 4", "bottle")]
    assert pairs[0]["difference"] == pytest.approx(99.0 - 100.0) and not pairs[0]["same_backbone"]

    scores = {c: 0.90 + 0.005 * i for i, c in enumerate(MVTEC_CATEGORIES)}
    full = [fake_record("patchcore", c, s, backbone="wide_resnet50_2") for c, s in scores.items()]
    by_key = {(p["number"].table, p["number"].category, p["number"].metric): p for p in compare(full, NUMBERS)}
    textures = by_key[("Table 2", "textures", "image_auroc")]
    assert textures["measured"] == pytest.approx(100 * sum(scores[c] for c in MVTEC_TEXTURES) / 5)
    assert textures["difference"] == pytest.approx(textures["measured"] - 99.0) and textures["same_backbone"]
    assert by_key[("Table 2", "objects", "pixel_auroc")]["measured"] == pytest.approx(97.0)
    assert ("Table 2", "all", "image_auroc") in by_key and len([k for k in by_key if k[0] == "Table 4"]) == 15
    assert not any(k[0] == "BTAD results" for k in by_key), "BTAD numbers must not be compared with MVTec runs"
    objects = by_key[("Table 2", "objects", "image_auroc")]
    assert objects["measured"] == pytest.approx(100 * sum(scores[c] for c in MVTEC_OBJECTS) / 10)


def test_config_conditions_select_the_paper_row():
    settings = {"views": ["resize"], "adaptation": "att_rep", "gamma_d": 1.0, "gamma_c": 1.0}
    cfa = [fake_record("cfa", c, 1.0, **settings) for c in MVTEC_CATEGORIES]
    plus = [fake_record("cfa_plus", c, 1.0, **{**settings, "views": ["resize", "crop"]}) for c in MVTEC_CATEGORIES]
    half = [fake_record("cfa", c, 1.0, **{**settings, "gamma_d": 0.5, "gamma_c": 0.5}) for c in MVTEC_CATEGORIES]
    no_adaptation = [fake_record("cfa", c, 1.0, **{**settings, "adaptation": "none"}) for c in MVTEC_CATEGORIES]

    def matched(records):
        return {(p["number"].table, p["number"].setting) for p in compare(records, NUMBERS) if p["number"].metric == "image_auroc"}

    assert matched(cfa) == {("Table 2", ""), ("Table 4", ""), ("Table 5", "L_att + L_rep")}
    plus_tables = matched(plus)
    assert {t for t, _ in plus_tables} == {"Table 2", "Table 4"} and all("CFA++" in s for _, s in plus_tables)
    assert matched(half) == {("Table 5", "L_att + L_rep")}, "a compressed CFA is not Table 2's CFA"
    assert matched(no_adaptation) == {("Table 5", "no adaptation")}
    six = [p["number"] for p in compare(half, NUMBERS) if p["number"].table == "Table 6"]
    assert sorted((n.metric, n.value) for n in six) == [("images_per_s", 93.0), ("pixel_auroc", 98.44)]
    degraded = [{**r, "degrade": "blur:3"} for r in cfa]
    assert compare(degraded, NUMBERS) == [], "runs on degraded test images are not the papers' setting"


def test_cfa_table3_aupro_is_flagged_not_comparable():
    """CFA's Table 3 normalises PRO differently: shown beside a measured run, flagged, with no delta."""
    table3 = [n for n in NUMBERS if n.table == "Table 3"]
    assert {n.note.startswith("not comparable:") for n in table3 if n.metric == "aupro"} == {True}
    assert not any(n.note.startswith("not comparable:") for n in table3 if n.metric == "image_auroc")
    flagged = next(n for n in table3 if n.metric == "aupro" and n.method == "padim" and n.category == "textures")
    records = [{**fake_record("padim", "textures", 0.99, dim=100), "dataset": "rd-mvtec",  # rd-mvtec has no class groups
                "metrics": {"image_auroc": 0.99, "pixel_auroc": 0.97, "aupro": 0.9}}]
    pairs = {(p["number"].metric, p["number"].category, p["number"].backbone): p for p in compare(records, NUMBERS)}
    aupro = pairs[("aupro", "textures", flagged.backbone)]
    assert aupro["measured"] == pytest.approx(90.0) and aupro["difference"] is None
    assert pairs[("image_auroc", "textures", flagged.backbone)]["difference"] is not None


def test_memory_bank_formulas_evaluate_the_papers_expressions():
    padim = fake_record("padim", "bottle", 1.0, dim=100)
    assert MEMORY_BANK["padim"].bytes(padim) == 4 * 28 * 28 * (100 * 100 + 100)
    patchcore = fake_record("patchcore", "bottle", 1.0, coreset_ratio=0.1, embed_dim=1024)
    # every layer pooled (here: stretched) to embed_dim, then the stack to embed_dim: D' = 1024 (patchcore-inspection)
    assert MEMORY_BANK["patchcore"].bytes(patchcore) == 4 * math.ceil(0.1 * 200 * 28 * 28) * 1024
    spade = {**fake_record("spade", "bottle", 1.0), "feature_maps": [["a", 24, 56, 56], ["b", 40, 28, 28], ["last", 320, 7, 7]]}
    assert MEMORY_BANK["spade"].bytes(spade) == 4 * 200 * 56 * 56 * (24 + 40)
    assert MEMORY_BANK["patchcore"].bytes({**patchcore, "feature_maps": None}) is None


def test_leaderboard_shows_paper_numbers_formulas_and_plots(tmp_path):
    records = [fake_record("patchcore", "bottle", 0.99, coreset_ratio=0.1, embed_dim=1024, reduce_rank=True),
               {**fake_record("padim", "bottle", 0.98, dim=100), "feature_cache": {"fit": {"hits": 3}, "test": {"hits": 0}}}]
    text = render(records, "records")
    assert "**Paper numbers beside measured ones**" in text and "| patchcore | bottle | image_auroc | 99.0 | 100 | -1.0 |" in text
    assert "| CFA, Lee et al. 2022, Table 4 |" in text and "seed 00" not in text  # cites the paper, not a design document
    assert "WRN50-2, size not stated (≠ backbone)" in text
    assert "| padim | bottle | N(μ, Σ) ∈ R^{H×W×D²} | no | 200 |" in text
    assert "1.0‡" in text and "feature cache" in text

    import json

    (tmp_path / "records").mkdir()
    few_shot = {**fake_record("padim", "bottle", 0.95, dim=100), "setting": {"name": "few_shot", "shots": 4, "draw": 0}}
    for i, r in enumerate([*records, few_shot]):
        (tmp_path / "records" / f"r{i}.json").write_text(json.dumps(r))
    out = write_report(tmp_path)
    plots = sorted(p.name for p in (tmp_path / "plots").glob("*_auroc_vs_*.png"))  # (the few-shot run adds a learning curve)
    stem = "mvtec_tf_efficientnet_lite0_224"  # a section of another setting gets its own plots, not the standard section's
    assert plots == [f"{stem}_auroc_vs_memory.png", f"{stem}_auroc_vs_throughput.png",
                     f"{stem}_few_shot_auroc_vs_memory.png", f"{stem}_few_shot_auroc_vs_throughput.png"]
    assert all(f"(plots/{name})" in out.read_text() for name in plots)
    assert all((tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in plots)
