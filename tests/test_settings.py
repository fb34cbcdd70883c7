"""Benchmark settings (few-shot, contaminated, multi-class): seeded splits, config checks, runs and their
records, per-image cost against analytic counts, and the report's settings sections."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_config, run_overrides
from hydra import compose, initialize_config_dir
from scipy.spatial.distance import euclidean
from sklearn.metrics import roc_auc_score

from adbench.config import conf_dir
from adbench.config.build import build_method
from adbench.config.schema import validate
from adbench.config.run_data import part_datasets
from adbench.data.dataset import ImageDataset
from adbench.data.samples import Sample
from adbench.data.setting_splits import contaminate, few_shot, union
from adbench.data.sources import load_folder, make_synthetic
from adbench.data.splits import Split
from adbench.data.transforms import Transform
from adbench.errors import ConfigError
from adbench.features.backbones import Backbone
from adbench.features.nn_search import NearestNeighbours
from adbench.methods import method_class
from adbench.methods.cost import measure_cost
from adbench.metrics.registry import HEADLINE
from adbench.results.records import RECORDS_DIR, config_hash
from adbench.results.setting_sections import (
    contamination_section,
    learning_curve_section,
    multi_class_section,
)

LAYERS = ["blocks.2", "blocks.4"]


def toy_split(n_train: int = 20, n_good: int = 6, n_bad: int = 10, category: str = "toy") -> Split:
    """Samples with distinct fake paths (the split functions never open files)."""
    root = Path("/data") / category
    train = [Sample(root / "train" / "good" / f"{i:03d}.png", 0) for i in range(n_train)]
    test = [Sample(root / "test" / "good" / f"{i:03d}.png", 0) for i in range(n_good)]
    test += [Sample(root / "test" / "crack" / f"{i:03d}.png", 1, root / "ground_truth" / "crack" / f"{i:03d}_mask.png", "crack") for i in range(n_bad)]
    return Split("folder", category, train, test)


def images(split: Split) -> tuple[set, set]:
    return {s.image for s in split.train}, {s.image for s in split.test}


# --- splits ------------------------------------------------------------------------------------------

def test_few_shot_draws_k_training_images_seeded_and_nested() -> None:
    split = toy_split()
    for shots in (1, 4, 16, 20):
        drawn = few_shot(split, shots, draw=0)
        train, test = images(drawn)
        assert len(drawn.train) == shots and train <= images(split)[0]
        assert drawn.test == split.test and not train & test
        assert few_shot(split, shots, draw=0).train == drawn.train, "same draw, same images"
    assert few_shot(split, 4, 0).train != few_shot(split, 4, 1).train
    for draw in (0, 1, 2):  # one draw's K images are among its larger K
        assert images(few_shot(split, 1, draw))[0] <= images(few_shot(split, 4, draw))[0] <= images(few_shot(split, 16, draw))[0]
    with pytest.raises(ConfigError, match="setting.shots=21"):
        few_shot(split, 21, 0)


def test_contamination_scores_every_ratio_on_one_test_set() -> None:
    """fixed_test: one pool of floor(pool x n_train) anomalies leaves the test set for every p, p = 0 included."""
    split = toy_split(n_train=20, n_bad=10)
    tests, trained = [], []
    for ratio, added in ((0.0, 0), (0.05, 1), (0.1, 2), (0.15, 3), (0.2, 4)):  # floor(p x 20), IM-IAD's count
        noisy, moved = contaminate(split, ratio, draw=0, protocol="fixed_test", pool=0.2)
        assert len(moved) == added and len(noisy.train) == 20 + added and noisy.train[:20] == split.train
        assert [s.label for s in noisy.train[20:]] == [0] * added and all(s.label == 1 for s in moved)
        tests.append(noisy.test)
        trained.append({s.image for s in moved})
    assert all(t == tests[0] for t in tests) and len(tests[0]) == 16 - 4, "the same 12 test images for every p"
    assert all(a <= b for a, b in zip(trained, trained[1:])), "a draw's smaller p is part of its larger p"
    assert not trained[-1] & {s.image for s in tests[0]}, "no anomaly trains and tests"
    assert contaminate(split, 0.1, 1, "fixed_test", 0.2)[0].test != tests[0], "another draw, another pool"
    with pytest.raises(ConfigError, match="setting.ratio=0.25 exceeds setting.pool=0.2"):
        contaminate(split, 0.25, 0, "fixed_test", 0.2)
    with pytest.raises(ConfigError, match="setting.pool=0.5"):  # 10 anomalies: none would be left to test
        contaminate(split, 0.1, 0, "fixed_test", 0.5)


def test_im_iad_protocol_moves_floor_ratio_anomalies_from_test_unlabelled() -> None:
    split = toy_split(n_train=20, n_bad=10)
    for ratio, added in ((0.0, 0), (0.05, 1), (0.1, 2), (0.15, 3), (0.35, 7)):  # floor(p x 20), IM-IAD's count
        noisy, moved = contaminate(split, ratio, draw=0, protocol="im_iad")
        train, test = images(noisy)
        assert len(moved) == added and len(noisy.train) == 20 + added and len(noisy.test) == 16 - added
        assert not train & test and train | test == set.union(*images(split)), "every image stays, in train or test"
        assert all(s.label == 1 and s.image not in test for s in moved)
        assert [s for s in noisy.train if s.image in {m.image for m in moved}] == [Sample(s.image, 0, None, s.defect) for s in moved]
        assert noisy.train[:20] == split.train, "added, not replacing normal images"
        assert contaminate(split, ratio, draw=0, protocol="im_iad")[1] == moved
    assert contaminate(split, 0.35, 0, "im_iad")[1] != contaminate(split, 0.35, 1, "im_iad")[1]
    with pytest.raises(ConfigError, match="setting.ratio=0.5"):  # 10 anomalies: none would be left to test
        contaminate(split, 0.5, 0, "im_iad")
    with pytest.raises(ConfigError, match="setting.ratio=0.01.*adds no anomaly"):
        contaminate(split, 0.01, 0, "im_iad")


def test_union_keeps_each_category_test_images_in_its_part() -> None:
    a, b = toy_split(5, 2, 3, "a"), toy_split(7, 4, 1, "b")
    merged, parts = union([("one", a), ("two", b)])
    assert len(merged.train) == 12 and len(merged.test) == 10
    assert [(p.dataset, p.category, p.n_train) for p in parts] == [("one", "a", 5), ("two", "b", 7)]
    for part, split in zip(parts, (a, b)):
        assert [merged.test[i] for i in part.indices([str(s.image) for s in merged.test])] == split.test
    with pytest.raises(ConfigError, match="one/a given twice"):
        union([("one", a), ("one", a)])
    with pytest.raises(ConfigError, match="at least 2 categories"):
        union([("one", a)])


# --- config ------------------------------------------------------------------------------------------

def test_setting_keys_are_validated(tmp_path) -> None:
    base = ["dataset=synthetic", f"results_dir={tmp_path}"]
    validate(make_config([*base, "setting=few_shot", "setting.shots=3", "setting.draw=2"]))
    validate(make_config([*base, "setting=contaminated", "setting.ratio=0"]))
    for overrides, message in [
        (["setting=few_shot", "setting.shots=0"], r"setting.shots=0: must be in \[1, inf\)"),
        (["setting=few_shot", "setting.shots=2.5"], "setting.shots=2.5: wrong type"),
        (["setting=contaminated", "setting.ratio=1"], r"setting.ratio=1: must be in \[0, 1\)"),
        (["setting=contaminated", "setting.protocol=mine"], "setting.protocol='mine': must be one of fixed_test, im_iad"),
        (["setting=contaminated", "+setting.shots=2"], "unknown key.*setting.shots"),
        (["setting=multi_class", "setting.categories=[nowhere/x]"], "setting.categories.0. dataset 'nowhere'"),
        (["dataset.category=[a,b]"], "a list of categories needs setting=multi_class"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate(make_config([*base, *overrides]))


def test_multi_class_parts_from_presets_take_the_run_size(monkeypatch) -> None:
    monkeypatch.setenv("ADBENCH_DATA", "/data")
    cfg = make_config(["dataset=mvtec", "dataset.crop=200", "setting=multi_class",
                       "setting.categories=[mvtec/bottle,kolektorsdd,mpdd_metal_plate,mvtec/cable]"])
    parts = part_datasets(cfg)
    assert [(p.name, p.label, p.category) for p in parts] == [
        ("mvtec", "mvtec", "bottle"), ("folder", "kolektorsdd", "kolektorsdd"), ("folder", "mpdd", "mpdd_metal_plate"), ("mvtec", "mvtec", "cable")]
    assert {(p.resize, p.crop) for p in parts} == {(256, 200)}
    assert parts[1].root == "/data/extra"
    every = part_datasets(make_config(["dataset=mvtec", "setting=multi_class", "dataset.category=all"]))
    assert len(every) == 15 and {p.category for p in every} >= {"bottle", "carpet", "zipper"}


# --- runs --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two synthetic categories in MVTec layout (other seeds: other images)."""
    root = tmp_path_factory.mktemp("data")
    make_synthetic(root, "aa", n_train=8, n_test=4, size=64, seed=1)
    make_synthetic(root, "bb", n_train=6, n_test=5, size=64, seed=2)
    return root


def data_args(folder: Path, category: str = "aa") -> list[str]:
    return ["dataset=folder", f"dataset.root={folder}", f"dataset.category={category}", "dataset.resize=64", "dataset.crop=64",
            "method.coreset_ratio=0.5"]


def test_runs_record_their_setting_and_splits(folder, tmp_path) -> None:
    full = run_overrides(data_args(folder), tmp_path)
    shot = run_overrides([*data_args(folder), "setting=few_shot", "setting.shots=3", "setting.draw=1"], tmp_path)
    noisy = run_overrides([*data_args(folder), "setting=contaminated", "setting.ratio=0.25", "setting.pool=0.25"], tmp_path)
    clean = run_overrides([*data_args(folder), "setting=contaminated", "setting.ratio=0", "setting.pool=0.25"], tmp_path)
    assert full["setting"]["name"] == "full" and full["n_train"] == 8
    assert shot["n_train"] == 3 and shot["n_test"] == full["n_test"] == 8
    assert shot["setting"] == {"name": "few_shot", "shots": 3, "draw": 1, "label": "few-shot K=3 draw 1"}
    assert noisy["n_train"] == 8 + 2 and noisy["n_test"] == 8 - 2 and noisy["setting"]["added_anomalies"] == 2
    assert clean["n_train"] == 8 and clean["n_test"] == 8 - 2 and clean["setting"]["test_anomalies_removed"] == 2, "p = 0: same test set"
    assert len(noisy["train_anomalies"]) == 2 and all(p.startswith("test/defect/") for p in noisy["train_anomalies"])
    assert len({full["config_hash"], shot["config_hash"], noisy["config_hash"]}) == 3, "the setting enters the config hash"
    again = run_overrides([*data_args(folder), "setting=few_shot", "setting.shots=3", "setting.draw=1"], tmp_path)
    assert again["created"] == shot["created"], "same setting, same config: the record is reused"


def test_multi_class_run_writes_a_record_per_category(folder, tmp_path) -> None:
    record = run_overrides(["dataset=folder", f"dataset.root={folder}", "dataset.category=all", "dataset.resize=64", "dataset.crop=64",
                            "method.coreset_ratio=0.5", "setting=multi_class"], tmp_path)
    records = {r["category"]: r for r in map(json.loads, map(Path.read_text, (tmp_path / RECORDS_DIR).glob("*.json")))}
    assert sorted(records) == ["aa", "bb"] and record["category"] == "aa"
    assert {r["n_train"] for r in records.values()} == {14} and {r["config_hash"] for r in records.values()} == {record["config_hash"]}
    assert records["aa"]["n_test"] == 8 and records["bb"]["n_test"] == 10
    assert [p["category"] for p in record["setting"]["parts"]] == ["aa", "bb"]

    # reference: the same model fitted on the pooled training images, scored per category, pixel AUROC by sklearn
    cfg = make_config(data_args(folder))
    backbone = Backbone("tf_efficientnet_lite0", list(cfg.method.layers))
    model = build_method(cfg.method, backbone, torch.device("cpu"))
    transform = Transform(64, 64, backbone.mean, backbone.std)
    splits = [load_folder(str(folder), c) for c in ("aa", "bb")]
    train = ImageDataset([s for split in splits for s in split.train], transform)
    model.fit([{"image": torch.stack([train[i]["image"] for i in range(len(train))])}])
    pooled = []
    for split in splits:
        test = [ImageDataset(split.test, transform)[i] for i in range(len(split.test))]
        maps = model.predict(torch.stack([t["image"] for t in test])).maps
        masks = np.stack([t["mask"].numpy() for t in test]).astype(bool)
        pooled.append((masks, maps))
        expected = roc_auc_score(masks.ravel(), maps.ravel())
        assert records[split.category]["metrics"]["pixel_auroc"] == pytest.approx(expected, abs=1e-6)
    union_auroc = roc_auc_score(np.concatenate([m.ravel() for m, _ in pooled]), np.concatenate([p.ravel() for _, p in pooled]))
    assert all(abs(r["metrics"]["pixel_auroc"] - union_auroc) > 1e-4 for r in records.values()), "each category is scored on its own"


def test_padim_fits_one_image_with_eps_identity() -> None:
    """K = 1: Sigma = eps I at every position, so the score is the Euclidean distance to the image's features / sqrt(eps)."""
    torch.manual_seed(0)
    layers = ["blocks.1", "blocks.2"]
    model = method_class("padim")(Backbone("tf_efficientnet_lite0", layers, pretrained=False), layers, dim=10, eps=0.04)
    train, test = torch.randn(1, 3, 32, 32), torch.randn(2, 3, 32, 32)
    model.fit([{"image": train}])
    x_train, x_test = model.embed(train).double().numpy(), model.embed(test).double().numpy()
    got = model.patch_scores(model.embed(test)).double().numpy()
    _, _, h, w = x_test.shape
    expected = [[[euclidean(x_test[b, :, i, j], x_train[0, :, i, j]) / 0.2 for j in range(w)] for i in range(h)] for b in range(2)]
    np.testing.assert_allclose(got, expected, rtol=1e-4)


# --- cost --------------------------------------------------------------------------------------------

def conv_flops(module: torch.nn.Module, image: torch.Tensor) -> int:
    """2 x output elements x (input channels / groups) x kernel area, summed over every Conv2d (forward hooks)."""
    total = []
    hooks = [m.register_forward_hook(lambda m, _, out: total.append(2 * out.numel() * m.weight[0].numel()))
             for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        module(image)
    for hook in hooks:
        hook.remove()
    return sum(total)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_cost_counts_backbone_search_and_smoothing_flops(backend) -> None:
    torch.manual_seed(0)
    backbone = Backbone("tf_efficientnet_lite0", LAYERS, pretrained=False)
    # the literal wide bank: the reduced one adds the R x projection, whose FLOPs this formula does not spell out
    model = method_class("patchcore")(backbone, LAYERS, coreset_ratio=0.25, nn_backend=backend, reduce_rank=False)
    model.fit([{"image": torch.randn(3, 3, 64, 64)}])
    test = [{"image": torch.randn(3, 64, 64)} for _ in range(5)]
    search = NearestNeighbours.search
    cost = measure_cost(model, test, images_per_s=12.5, batch_size=4, count=3)
    bank, dims = model.bank.shape
    patches = (64 // 8) ** 2  # one patch per position of the stride-8 map
    side = 64 // 8  # upsampling and blur as one matrix per axis (features/maps.py): (64 x 8) @ (8 x 8), then @ (8 x 64)
    expected_backbone = conv_flops(backbone.model, test[0]["image"][None])  # timm's own network (adbench runs its folded copy)
    assert cost["flops_per_image_backbone"] == expected_backbone
    assert cost["flops_per_image"] == expected_backbone + 2 * patches * bank * dims + 2 * 64 * side * side + 2 * 64 * side * 64
    assert cost["params_fitted"] == bank * dims and cost["params_total"] == cost["params_backbone"] + bank * dims
    assert cost["latency_images"] == 3 and 0 < cost["latency_ms_p50"] <= cost["latency_ms_p95"]
    assert (cost["images_per_s"], cost["batch_size"], cost["memory_bank_bytes"]) == (12.5, 4, model.memory_bank_bytes)
    assert NearestNeighbours.search is search, "the search is restored after counting"


# --- report ------------------------------------------------------------------------------------------

def fake(method: str, setting: dict, auroc: float, **fields) -> dict:
    """A record as the runner writes it (the fields the settings sections read)."""
    config = {"method": {"name": method}, "dataset": {"name": "mvtec", "digest": "d"}, "seed": 0, "setting": setting}
    record = {"method": method, "dataset": "mvtec", "category": "bottle", "backbone": "lite0", "image_size": 224, "resize": 256,
              "seed": 0, "device": "cpu", "setting": setting, "metrics": {"image_auroc": auroc, "pixel_auroc": auroc - 0.05, "aupro": None},
              "memory_bank": {"bytes": 2**20}, "n_train": 209, "fit_seconds": 1.0, "config": config, "config_hash": config_hash(config),
              "train_anomalies": []}
    return record | fields


def test_learning_and_contamination_curves(tmp_path) -> None:
    runs = [fake("padim", {"name": "few_shot", "shots": k, "draw": d}, a, n_train=k)
            for k, d, a in [(1, 0, 0.80), (1, 1, 0.90), (4, 0, 0.95), (4, 1, 0.97)]]
    runs.append(fake("padim", {"name": "full"}, 0.99))
    runs += [fake("padim", {"name": "contaminated", "ratio": p, "draw": 0, "added_anomalies": n}, a) for p, n, a in [(0, 0, 0.99), (0.1, 20, 0.93)]]
    runs += [fake("padim", {"name": "contaminated", "ratio": p, "draw": 0, "added_anomalies": n, "protocol": "fixed_test"}, a)
             for p, n, a in [(0, 0, 0.98), (0.05, 10, 0.95)]]
    lines = learning_curve_section(runs, tmp_path / "plots")
    text = "\n".join(lines)
    assert "| padim | 85.0 (80.0–90.0, n=2) | 96.0 (95.0–97.0, n=2) | 99.0 (n_train 209) |" in text  # mean, range over the draws
    assert "| padim | 1.00 / n/a / n/a | 1.00 / n/a / n/a |" in text, "cost cells: bank MiB, and n/a without a cost block"
    assert "| configuration | K=1 | K=4 | full setting |" in text and (tmp_path / "plots" / "mvtec_bottle_lite0_224_learning_curve.png").stat().st_size > 0
    text = "\n".join(contamination_section(runs, tmp_path / "plots"))
    fixed, im_iad = text.split("## Contaminated training sets, IM-IAD protocol")  # records without a protocol: IM-IAD's
    assert "p=0.1 (+20)" in im_iad and "| padim | 99.0 | 93.0 | 99.0 (n_train 209) |" in im_iad
    assert "p=0.05 (+10)" in fixed and "| padim | 98.0 | 95.0 | 99.0 (n_train 209) |" in fixed
    assert learning_curve_section([runs[-1]]) == [] and multi_class_section(runs) == []


def test_multi_class_section_sets_each_category_beside_its_one_class_run() -> None:
    multi = {"name": "multi_class", "categories": None}
    runs = [fake("patchcore", multi, 0.90, category="bottle", n_train=300),
            fake("patchcore", multi, 0.70, category="cable", n_train=300),
            fake("patchcore", {"name": "full"}, 0.95, category="bottle"),
            fake("patchcore", {"name": "full"}, 0.80, category="cable", image_size=256)]  # another size: no twin
    text = "\n".join(multi_class_section(runs))
    cells = {"image_auroc": "95.0 / 90.0 (-5.0)", "pixel_auroc": "90.0 / 85.0 (-5.0)"}  # one-class / multi-class; other metrics absent
    assert "| mvtec/bottle | 209 | " + " | ".join(cells.get(m.name, "n/a / n/a") for m in HEADLINE) + " |" in text
    assert "| mvtec/cable | – | – / 70.0 |" in text and "No one-class run of this configuration at 224 px for: mvtec/cable" in text
    assert "| multi-class (2 categories) | 300 | 1.0 | 1.00 | n/a | n/a |" in text and "| one-class mvtec/bottle | 209 |" in text


@pytest.mark.parametrize("preset", ["few_shot", "contaminated", "multi_class"])
def test_presets_compose_to_valid_jobs(preset, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ADBENCH_DATA", str(tmp_path))
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(config_name="config", overrides=[f"experiment={preset}"], return_hydra_config=True)
    swept = {key: str(values).split(",") for key, values in cfg.hydra.sweeper.params.items()}
    assert cfg.setting.name == preset and swept["method"][0] in ("patchcore", "padim")
    for i in range(max(len(v) for v in swept.values())):  # every value of every swept key in some job
        job = [f"{key}={values[min(i, len(values) - 1)]}" for key, values in swept.items()]
        validate(make_config([f"experiment={preset}", *job, f"results_dir={tmp_path}"]))
