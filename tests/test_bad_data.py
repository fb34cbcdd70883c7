"""Messy folders: each bad file is a clear error naming it, or has the handling documented in datasets.py."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import run_overrides
from PIL import Image

from adbench.data.dataset import ImageDataset
from adbench.data.samples import read_image, verify_samples
from adbench.data.sources import load_split, make_synthetic
from adbench.data.transforms import Transform
from adbench.errors import DataError
from adbench.methods.patchcore import PatchCore
from adbench.methods.scoring import NonFiniteError
from adbench.results.report import write_report

SIZE = 32


@pytest.fixture
def root(tmp_path) -> Path:
    """A small valid folder dataset, ``root/stripes`` in MVTec layout (4 train, 2 + 2 test images)."""
    make_synthetic(tmp_path, n_train=4, n_test=2, size=SIZE)
    return tmp_path


def run_folder(root: Path, results: Path, *extra: str) -> dict:
    overrides = ["dataset=folder", f"dataset.root={root}", "dataset.category=stripes", f"dataset.resize={SIZE}", f"dataset.crop={SIZE}"]
    return run_overrides([*overrides, "device=cpu", "method.coreset_ratio=0.5", *extra], results)


def records_in(results: Path) -> list[Path]:
    return sorted((results / "records").glob("*.json")) if (results / "records").is_dir() else []


@pytest.mark.parametrize(
    "where,content",
    [("train/good/zero.png", b""), ("train/good/text.png", b"just text"), ("test/good/page.jpg", b"<html></html>"), ("test/defect/000.png", b"")],
)
def test_unreadable_files_fail_before_any_fit(root, where, content) -> None:
    target = root / "stripes" / where
    target.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(f"cannot read image {target}")):
        load_split("folder", str(root), "stripes")


def truncate(path: Path) -> None:
    """Rewrite ``path`` as a noisy image, then cut its pixel data in half (the header stays readable)."""
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_truncated_images_are_all_named_before_any_fit(root, tmp_path, monkeypatch) -> None:
    train, test = root / "stripes" / "train" / "good" / "001.png", root / "stripes" / "test" / "good" / "001.png"
    truncate(train)
    truncate(test)
    split = load_split("folder", str(root), "stripes")  # headers are fine
    with pytest.raises(DataError, match=re.escape(f"cannot read image {train}")):
        ImageDataset(split.train, Transform(SIZE, SIZE))[1]

    def fit(*_args, **_kwargs):
        raise AssertionError("the fit started before the bad images were found")

    monkeypatch.setattr(PatchCore, "fit", fit)
    with pytest.raises(DataError) as caught:
        run_folder(root, tmp_path / "results")
    message = str(caught.value)
    assert message.startswith("2 unreadable file(s) among the training and test images, found before any fit: ")
    assert f"cannot read image {train}" in message and f"cannot read image {test}" in message and "\n" not in message
    assert not records_in(tmp_path / "results")


def test_float_images_are_scaled_by_their_range(tmp_path) -> None:
    values = np.random.default_rng(0).random((SIZE, SIZE)).astype(np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "unit.tiff")
    Image.fromarray(values * 40 - 10, mode="F").save(tmp_path / "wide.tiff")  # another range: -10 .. 30
    expected = np.round(values.astype(np.float64) * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "unit.tiff"))[..., 0], expected)
    wide = np.asarray(read_image(tmp_path / "wide.tiff"))[..., 0].astype(int)
    stretched = (values * 40 - 10).astype(np.float64)
    reference = np.round((stretched - stretched.min()) / np.ptp(stretched) * 255)
    assert wide.min() == 0 and wide.max() == 255 and np.abs(wide - reference).max() <= 1


def test_an_empty_mask_of_a_defect_image_is_a_warning(root, tmp_path) -> None:
    mask = sorted((root / "stripes" / "ground_truth" / "defect").glob("*.png"))[0]
    Image.new("L", (SIZE, SIZE)).save(mask)
    split = load_split("folder", str(root), "stripes")
    with pytest.warns(UserWarning, match=re.escape(f"mask {mask} of a defect image has no defect pixel")):
        verify_samples(split.test)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verify_samples(split.train)  # good images: no mask, no warning


def test_non_image_and_hidden_files_are_ignored(root) -> None:
    train = root / "stripes" / "train" / "good"
    for name in ("notes.txt", "Thumbs.db", ".DS_Store", ".hidden.png", "labels.csv"):
        (train / name).write_bytes(b"x")
    (train / "subfolder").mkdir()
    split = load_split("folder", str(root), "stripes")
    assert sorted(s.image.name for s in split.train) == ["000.png", "001.png", "002.png", "003.png"]


def test_empty_train_folder_is_named(root) -> None:
    train = root / "stripes" / "train" / "good"
    for path in train.iterdir():
        path.unlink()
    (train / "readme.txt").write_text("images go here")
    with pytest.raises(DataError, match=f"no training images .*in {re.escape(str(train))}"):
        load_split("folder", str(root), "stripes")


def test_mask_size_mismatch_names_both_files(root) -> None:
    mask = root / "stripes" / "ground_truth" / "defect" / "001_mask.png"
    Image.new("L", (SIZE // 2, SIZE)).save(mask)
    with pytest.raises(DataError, match=f"mask {re.escape(str(mask))} is 16x32, its image .*001.png is 32x32"):
        load_split("folder", str(root), "stripes")


def test_mask_without_image_is_ignored_with_a_warning(root) -> None:
    orphan = root / "stripes" / "ground_truth" / "defect" / "zzz_mask.png"
    Image.new("L", (SIZE, SIZE)).save(orphan)
    with pytest.warns(UserWarning, match=re.escape(f"1 mask(s) without a test image are ignored, e.g. {orphan}")):
        split = load_split("folder", str(root), "stripes")
    assert len(split.test) == 4 and all(s.mask != orphan for s in split.test)


def test_defect_image_without_mask(root, tmp_path) -> None:
    gt = root / "stripes" / "ground_truth"
    (gt / "defect" / "000_mask.png").unlink()
    with pytest.raises(DataError, match="defect image .*000.png has no mask"):
        load_split("folder", str(root), "stripes")
    for mask in (gt / "defect").iterdir():
        mask.unlink()
    (gt / "defect").rmdir()
    gt.rmdir()  # no ground truth at all: image-level evaluation
    with pytest.warns(UserWarning, match="no ground_truth folder: image-level evaluation only"):
        split = load_split("folder", str(root), "stripes")
    assert not split.has_masks and sum(s.label for s in split.test) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = run_folder(root, tmp_path / "results")
    assert record["metrics"]["image_auroc"] is not None and record["metrics"]["pixel_auroc"] is None
    assert record["pixel_metrics"].startswith("not applicable")


def test_only_good_test_images_are_recorded_as_not_applicable(root, tmp_path, capsys) -> None:
    stripes = root / "stripes"
    for folder in (stripes / "test" / "defect", stripes / "ground_truth" / "defect"):
        for path in folder.iterdir():
            path.unlink()
    record = run_folder(root, tmp_path / "results")
    assert record["n_test"] == 2 and set(record["metrics"].values()) == {None}
    assert "I-AUROC n/a (the test set has no anomalous image)" in capsys.readouterr().out  # the reason, where n/a is printed
    (path,) = records_in(tmp_path / "results")
    assert json.loads(path.read_text())["metrics"]["image_auroc"] is None
    report = write_report(tmp_path / "results").read_text()
    assert "| patchcore [coreset_ratio=0.5" in report


def test_image_modes_are_read_as_8_bit_rgb(tmp_path) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    rgb = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)

    def roundtrip(image: Image.Image, name: str) -> np.ndarray:
        image.save(tmp_path / name)
        return np.asarray(read_image(tmp_path / name))

    sixteen = roundtrip(Image.fromarray(gray.astype(np.uint16) * 257), "sixteen.png")  # full 16-bit range
    assert Image.open(tmp_path / "sixteen.png").mode == "I;16"
    np.testing.assert_array_equal(sixteen, np.repeat(gray[..., None], 3, 2))
    dark = roundtrip(Image.fromarray(np.full((SIZE, SIZE), 200, np.uint16)), "dark16.png")
    assert dark.max() <= 1  # scaled by bit depth, not stretched to the image's own maximum
    rgba = np.dstack([rgb, np.where(gray > 128, 255, 0).astype(np.uint8)])
    np.testing.assert_array_equal(roundtrip(Image.fromarray(rgba, "RGBA"), "rgba.png"), rgb)  # alpha dropped
    palette = Image.fromarray(rgb).quantize(16)
    np.testing.assert_array_equal(roundtrip(palette, "palette.png"), np.asarray(palette.convert("RGB")))
    np.testing.assert_array_equal(roundtrip(Image.fromarray(gray), "gray.png"), np.repeat(gray[..., None], 3, 2))
    la = roundtrip(Image.fromarray(np.dstack([gray, gray]), "LA"), "la.png")
    np.testing.assert_array_equal(la, np.repeat(gray[..., None], 3, 2))
    assert roundtrip(Image.fromarray(gray > 128), "bits.png").shape == (SIZE, SIZE, 3)


def test_very_large_image_over_the_pixel_limit_is_named(root, monkeypatch) -> None:
    big = root / "stripes" / "train" / "good" / "000.png"  # 32 x 32 = 1024 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # error above 2 x 300 pixels
    with pytest.raises(DataError, match=f"cannot read image {re.escape(str(big))}.*decompression bomb"):
        load_split("folder", str(root), "stripes")


def test_mixed_sizes_modes_small_and_large_images_run(root, tmp_path) -> None:
    """Valid but messy: every image mode and size in one folder runs end to end at one input size."""
    train = root / "stripes" / "train" / "good"
    base = np.asarray(Image.open(train / "000.png"))
    Image.fromarray(base).resize((8, 8)).save(train / "small.png")  # smaller than the crop
    Image.fromarray(base).resize((2400, 1800)).save(train / "large.png")  # large, not square
    Image.fromarray(base).convert("RGBA").resize((50, 40)).save(train / "rgba.png")
    Image.fromarray(base).quantize(64).save(train / "palette.png")
    Image.fromarray(base[..., 0].astype(np.uint16) * 257).save(train / "sixteen.png")
    Image.fromarray(base).convert("L").resize((45, 45)).save(train / "gray.jpg")
    defect, mask = root / "stripes" / "test" / "defect" / "001.png", root / "stripes" / "ground_truth" / "defect" / "001_mask.png"
    Image.open(defect).resize((48, 40)).save(defect)  # a test image and its mask of another size
    Image.open(mask).resize((48, 40), Image.NEAREST).save(mask)
    record = run_folder(root, tmp_path / "results")
    assert record["n_train"] == 10 and record["n_test"] == 4
    assert all(np.isfinite(v) for v in record["metrics"].values())
    item = ImageDataset(load_split("folder", str(root), "stripes").train, Transform(SIZE, SIZE))
    assert {tuple(item[i]["image"].shape) for i in range(len(item))} == {(3, SIZE, SIZE)}


def test_non_finite_features_and_scores_are_named(root, tmp_path, monkeypatch) -> None:
    embed = PatchCore.embed

    def nan_features(self, images):
        features = embed(self, images)
        features[0, 0, 0, 0] = float("nan")
        return features

    monkeypatch.setattr(PatchCore, "embed", nan_features)
    with pytest.raises(NonFiniteError, match="patchcore: fitted bank holds NaN or inf"):
        run_folder(root, tmp_path / "results", "method.coreset_ratio=1.0")
    monkeypatch.setattr(PatchCore, "embed", embed)
    predict = PatchCore.predict

    def nan_second_score(self, images):
        prediction = predict(self, images)
        prediction.image_scores[1] = float("inf")
        return prediction

    monkeypatch.setattr(PatchCore, "predict", nan_second_score)
    test_files = sorted(str(p) for p in (root / "stripes" / "test").rglob("*.png"))
    with pytest.raises(NonFiniteError, match=re.escape(f"NaN or inf scores for 1 image(s), e.g. ['{test_files[1]}']")):
        run_folder(root, tmp_path / "results")
    assert not records_in(tmp_path / "results")
