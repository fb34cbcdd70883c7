"""BTAD, VisA and MPDD loaders on tiny generated trees in each official layout."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import make_config
from PIL import Image

from adbench.data.benchmark_sets import (
    BTAD_PRODUCTS,
    MPDD_CATEGORIES,
    VISA_CATEGORIES,
    VISA_GROUPS,
    load_btad,
    load_mpdd,
    load_visa,
)
from adbench.data.dataset import ImageDataset
from adbench.data.sources import load_split
from adbench.data.transforms import Transform
from adbench.errors import ConfigError, DataError


def write_image(path: Path, size: tuple[int, int], seed: int) -> None:
    """A random RGB image of ``size`` (width, height); the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_mask(path: Path, size: tuple[int, int], box: tuple[int, int, int, int], value: int = 255) -> np.ndarray:
    """A single-channel mask with ``value`` inside ``box`` (x0, y0, x1, y1); returns it as bool."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = value
    Image.fromarray(mask, mode="L").save(path)
    return mask > 0


# BTAD: image and mask suffix per product, as in the released archive (01 and 03 images .bmp,
# 02 images .png; masks .png except product 03's .bmp).
BTAD_FORMATS = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}


@pytest.fixture
def btad_root(tmp_path: Path) -> Path:
    root = tmp_path / "BTech_Dataset_transformed"
    for p, (image_ext, mask_ext) in BTAD_FORMATS.items():
        size = (24, 20) if p != "03" else (32, 24)
        for i in range(5):
            write_image(root / p / "train" / "ok" / f"{i:04d}{image_ext}", size, i)
        for i in range(3):
            write_image(root / p / "test" / "ok" / f"{i:04d}{image_ext}", size, 10 + i)
        for i in range(4):
            write_image(root / p / "test" / "ko" / f"{i:04d}{image_ext}", size, 20 + i)
            write_mask(root / p / "ground_truth" / "ko" / f"{i:04d}{mask_ext}", size, (2 + i, 3, 8 + i, 9))
    return root


def test_btad_counts_labels_and_mask_formats(btad_root: Path):
    for product, (image_ext, mask_ext) in BTAD_FORMATS.items():
        split = load_btad(str(btad_root), product)
        assert (split.name, split.category, split.has_masks) == ("btad", product, True)
        assert len(split.train) == 5 and all(s.label == 0 and s.image.suffix == image_ext for s in split.train)
        assert [s.label for s in split.test].count(0) == 3 and [s.label for s in split.test].count(1) == 4
        for sample in split.test:
            if sample.label:
                assert sample.mask.suffix == mask_ext and sample.mask.stem == sample.image.stem
                assert sample.mask.parent == btad_root / product / "ground_truth" / "ko"
            else:
                assert sample.mask is None


def test_btad_masks_reach_the_dataset(btad_root: Path):
    split = load_btad(str(btad_root), "03")
    data = ImageDataset(split.test, Transform(resize=32, crop=32))
    anomalous = next(i for i, s in enumerate(split.test) if s.label and s.image.stem == "0002")
    item = data[anomalous]
    expected = np.zeros((24, 32), bool)
    expected[3:9, 4:10] = True
    # 32x24 → 32x32 by nearest neighbour: rows are stretched by 4/3, columns unchanged
    rows = (np.arange(32) * 24 / 32).astype(int)
    assert np.array_equal(item["mask"].numpy().astype(bool), expected[rows])
    assert item["label"] == 1


def test_btad_category_spellings_and_registration(btad_root: Path):
    assert load_btad(str(btad_root), 2).category == "02"
    assert load_split("btad", str(btad_root), "1").category == "01"
    with pytest.raises(ConfigError, match="dataset.category"):
        load_btad(str(btad_root), "04")
    assert BTAD_PRODUCTS == ["01", "02", "03"]


def test_btad_missing_mask_and_missing_root(btad_root: Path, tmp_path: Path):
    (btad_root / "02" / "ground_truth" / "ko" / "0001.png").unlink()
    with pytest.raises(DataError, match="0001.png has no mask"):
        load_btad(str(btad_root), "02")
    with pytest.raises(DataError, match=r"BTAD product '01' not found at .*nowhere.*avires"):
        load_btad(str(tmp_path / "nowhere"), "01")


def test_btad_root_from_environment(btad_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "btad").symlink_to(btad_root)
    monkeypatch.setenv("ADBENCH_DATA", str(tmp_path / "data"))
    assert len(load_btad(None, "01").test) == 7
    monkeypatch.delenv("ADBENCH_DATA")
    with pytest.raises(DataError, match="ADBENCH_DATA"):
        load_btad(None, "01")


# VisA: JPEG images of differing sizes, masks with small non-zero values, the official CSV.
@pytest.fixture
def visa_root(tmp_path: Path) -> Path:
    root = tmp_path / "VisA_20220922"
    rows = [("object", "split", "label", "image", "mask")]
    for c, category in enumerate(["candle", "pcb1"]):
        size = (40, 30) if category == "candle" else (36, 44)
        for i in range(6):
            rel = f"{category}/Data/Images/Normal/{i:04d}.JPG"
            write_image(root / rel, size, 100 * c + i)
            rows.append((category, "train" if i < 4 else "test", "normal", rel, ""))
        for i in range(3):
            rel, mask_rel = f"{category}/Data/Images/Anomaly/{i:03d}.JPG", f"{category}/Data/Masks/Anomaly/{i:03d}.png"
            write_image(root / rel, size, 100 * c + 50 + i)
            write_mask(root / mask_rel, size, (5, 5, 15, 12), value=1 + i)  # instance ids, not 255
            rows.append((category, "test", "anomaly", rel, mask_rel))
    (root / "split_csv").mkdir(parents=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return root


def test_visa_reads_the_official_split(visa_root: Path):
    split = load_visa(str(visa_root), "pcb1")
    assert (split.name, split.category, split.group) == ("visa", "pcb1", "complex structure")
    assert len(split.train) == 4 and all(s.label == 0 for s in split.train)
    assert [s.label for s in split.test] == [0, 0, 1, 1, 1]
    assert all(s.image.is_relative_to(visa_root / "pcb1") for s in split.train + split.test)
    assert [s.mask.name for s in split.test if s.label] == ["000.png", "001.png", "002.png"]
    assert load_visa(str(visa_root), "candle").group == "multiple instances"
    assert load_split("visa", str(visa_root), "candle", split_file="split_csv/1cls.csv").category == "candle"


def test_visa_nonzero_masks_and_differing_jpeg_sizes(visa_root: Path):
    data = ImageDataset(load_visa(str(visa_root), "candle").test + load_visa(str(visa_root), "pcb1").test, Transform(resize=40, crop=40))
    shapes = {Image.open(s.image).size for s in data.samples}
    assert shapes == {(40, 30), (36, 44)} and {Image.open(s.image).format for s in data.samples} == {"JPEG"}
    for i, sample in enumerate(data.samples):
        item = data[i]
        assert item["image"].shape == (3, 40, 40)
        # masks hold 1, 2, 3 (not 255): every non-zero pixel is a defect
        assert (item["mask"].sum() > 0) == bool(sample.label)
    candle_anomaly = data[3]["mask"].numpy()
    rows, cols = (np.arange(40) * 30 / 40).astype(int), np.arange(40)
    expected = np.zeros((30, 40), bool)
    expected[5:12, 5:15] = True
    assert np.array_equal(candle_anomaly.astype(bool), expected[rows][:, cols])


def test_visa_categories_are_the_published_ones():
    # Zou et al., ECCV 2022 (SPot-the-Difference), Table 1: complex structure / multiple instances / single instance
    published = {"pcb1", "pcb2", "pcb3", "pcb4", "macaroni1", "macaroni2", "capsules", "candle", "cashew", "chewinggum", "fryum", "pipe_fryum"}
    assert set(VISA_CATEGORIES) == published and len(VISA_CATEGORIES) == len(published)
    assert sorted(c for group in VISA_GROUPS.values() for c in group) == sorted(published)  # every category in exactly one group


def test_visa_bad_inputs(visa_root: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="dataset.category"):
        load_visa(str(visa_root), "bottle")
    with pytest.raises(DataError, match="lists no images of category 'cashew'"):
        load_visa(str(visa_root), "cashew")
    with pytest.raises(DataError, match=r"split file .*2cls_fewshot.csv not found"):
        load_visa(str(visa_root), "candle", split_file="split_csv/2cls_fewshot.csv")
    with pytest.raises(DataError, match=r"VisA not found at .*nothing.*spot-diff"):
        load_visa(str(tmp_path / "nothing"), "candle")
    (visa_root / "pcb1" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    with pytest.raises(DataError, match=r"1cls.csv line \d+: mask .*001.png does not exist"):
        load_visa(str(visa_root), "pcb1")
    csv_path = visa_root / "split_csv" / "1cls.csv"
    csv_path.write_text(csv_path.read_text().replace("candle,train,normal", "candle,train,weird", 1))
    with pytest.raises(DataError, match="label 'weird'"):
        load_visa(str(visa_root), "candle")
    csv_path.write_text("object,split,image\ncandle,train,x.JPG\n")
    with pytest.raises(DataError, match="missing column"):
        load_visa(str(visa_root), "candle")


# MPDD: MVTec layout.
def test_mpdd_mvtec_layout(tmp_path: Path):
    base = tmp_path / "MPDD" / "tubes"
    for i in range(3):
        write_image(base / "train" / "good" / f"{i:03d}.png", (16, 16), i)
    write_image(base / "test" / "good" / "000.png", (16, 16), 9)
    for i in range(2):
        write_image(base / "test" / "anomalous" / f"{i:03d}.png", (16, 16), 20 + i)
        write_mask(base / "ground_truth" / "anomalous" / f"{i:03d}_mask.png", (16, 16), (1, 1, 4, 4))
    split = load_mpdd(str(tmp_path / "MPDD"), "tubes")
    assert (split.name, len(split.train), sorted(s.label for s in split.test)) == ("mpdd", 3, [0, 1, 1])
    assert all(s.mask.name.endswith("_mask.png") for s in split.test if s.label)
    assert load_split("mpdd", str(tmp_path / "MPDD"), "tubes").category == "tubes"
    with pytest.raises(DataError, match=r"MPDD category 'connector' not found at .*stepanje/MPDD"):
        load_mpdd(str(tmp_path / "MPDD"), "connector")
    with pytest.raises(ConfigError, match="dataset.category"):
        load_mpdd(str(tmp_path / "MPDD"), "bottle")
    # Jezek et al., ICUMT 2021: the six MPDD parts
    assert sorted(MPDD_CATEGORIES) == ["bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"]


@pytest.mark.parametrize("dataset", ["btad", "visa", "mpdd"])
def test_dataset_configs_compose(dataset: str, tmp_path: Path):
    cfg = make_config([f"dataset={dataset}", f"dataset.root={tmp_path}"])
    assert cfg.dataset.name == dataset and cfg.dataset.degrade is None
    with pytest.raises(DataError, match=re.escape(str(tmp_path))):
        load_split(cfg.dataset.name, cfg.dataset.root, cfg.dataset.category)
