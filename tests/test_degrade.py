"""Test-time degradations: parameters, determinism, masks moved with the geometry, runner and report."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_overrides
from omegaconf import OmegaConf
from PIL import Image

from adbench.data.dataset import ImageDataset
from adbench.data.degrade import (
    SEVERITIES,
    Degradation,
    Degrader,
    degrader_from_config,
    parse_degrade,
    variant_name,
)
from adbench.data.samples import Sample
from adbench.data.sources import make_synthetic
from adbench.data.transforms import Transform
from adbench.errors import ConfigError
from adbench.metrics.registry import HEADLINE
from adbench.results.degraded import clean_twin_hash, degradation_section
from adbench.results.report import render


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def textured(h: int = 48, w: int = 64, seed: int = 0, low: int = 40, high: int = 200) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (h, w, 3), dtype=np.uint8)


def test_parse_specs():
    assert parse_degrade(None) == [] and parse_degrade("none") == [] and parse_degrade("") == []
    assert parse_degrade("gaussian_noise:3") == [Degradation("gaussian_noise", 3)]
    assert parse_degrade({"kind": "jpeg", "severity": 2}) == [Degradation("jpeg", 2)]
    steps = parse_degrade(OmegaConf.create(["blur:1", {"kind": "affine", "severity": 5}]))
    assert [s.label for s in steps] == ["blur:1", "affine:5"]
    assert Degrader(steps, 0, 32).label == "blur:1+affine:5"
    assert degrader_from_config("none", 0, 32) is None
    assert variant_name("wrn", degrader_from_config("jpeg:3", 0, 32)) == "wrn; jpeg:3"
    assert variant_name(None, None) is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fog:3", "unknown dataset.degrade kind 'fog'"),
        ("jpeg:0", "integer 1..5"),
        ("jpeg:6", "integer 1..5"),
        ("jpeg", "expected 'kind:severity'"),
        ("jpeg:x", "expected 'kind:severity'"),
        ({"kind": "jpeg", "level": 3}, "kind and severity"),
        (3, "expected none"),
    ],
)
def test_bad_specs_name_the_key(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_degrade(spec)


def test_gaussian_noise_has_the_stated_std():
    image = np.full((128, 128, 3), 128, np.uint8)
    stds = []
    for severity, sigma in enumerate(SEVERITIES["gaussian_noise"], start=1):
        out, _ = Degradation("gaussian_noise", severity).apply(image, np.zeros((128, 128), bool), rng(severity))
        residual = out.astype(float) - 128
        assert abs(residual.mean()) < 0.5
        assert residual.std() == pytest.approx(255 * sigma, rel=0.05)
        stds.append(residual.std())
    assert stds == sorted(stds)


def gaussian_reference(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur by hand: kernel truncated at 4 sigma, half-sample symmetric borders."""
    radius = int(4 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    out = image.astype(float)
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        out = sum(k * np.take(padded, np.arange(i, i + image.shape[axis]), axis=axis) for i, k in enumerate(kernel))
    return np.clip(np.rint(out), 0, 255)


def test_blur_matches_a_hand_built_gaussian():
    image = textured()
    out, _ = Degradation("blur", 3).apply(image, np.zeros(image.shape[:2], bool), rng())
    assert np.abs(out.astype(float) - gaussian_reference(image, SEVERITIES["blur"][2])).max() <= 1
    assert out.std() < image.std() and abs(out.mean() - image.mean()) < 1


def test_brightness_contrast_is_an_affine_intensity_map():
    image = textured(low=90, high=160)  # no clipping at severity 3
    brightness, contrast = SEVERITIES["brightness_contrast"][2]
    seen = set()
    for seed in range(12):
        out, _ = Degradation("brightness_contrast", 3).apply(image, np.zeros(image.shape[:2], bool), rng(seed))
        x, y = image.ravel() / 255.0, out.ravel() / 255.0
        slope, intercept = np.polyfit(x, y, 1)
        assert min(abs(slope - (1 - contrast)), abs(slope - (1 + contrast))) < 0.01
        shift = y.mean() - x.mean()  # the mean moves by exactly ± brightness
        assert abs(abs(shift) - brightness) < 0.005
        seen.add((slope > 1, shift > 0))
    assert len(seen) == 4  # all four directions occur across images


def test_jpeg_is_a_pil_round_trip_and_worsens_with_severity(tmp_path: Path):
    image = textured(64, 64)
    errors = []
    for severity, quality in enumerate(SEVERITIES["jpeg"], start=1):
        out, _ = Degradation("jpeg", severity).apply(image, np.zeros((64, 64), bool), rng())
        path = tmp_path / f"{quality}.jpg"
        Image.fromarray(image).save(path, quality=quality)
        assert np.array_equal(out, np.asarray(Image.open(path).convert("RGB")))
        errors.append(np.abs(out.astype(float) - image).mean())
    assert errors == sorted(errors)


def test_affine_moves_the_mask_with_the_image():
    h, w = 80, 96
    image = np.full((h, w, 3), 30, np.uint8)
    mask = np.zeros((h, w), bool)
    mask[20:45, 50:70] = True
    image[mask] = 220
    moved_any = False
    for seed in range(8):
        out, moved = Degradation("affine", 5).apply(image, mask, rng(seed))
        assert out.shape == image.shape and moved.shape == mask.shape and moved.dtype == bool
        bright = out[..., 0] > 125
        iou = (bright & moved).sum() / (bright | moved).sum()
        assert iou > 0.9
        assert moved.sum() == pytest.approx(mask.sum(), rel=0.1)  # a rigid motion keeps the area
        moved_any |= not np.array_equal(moved, mask)
    assert moved_any


def test_affine_stays_within_the_stated_shift():
    h, w = 100, 100
    image = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), bool)
    mask[48:52, 48:52] = True  # centre: rotation barely moves it, the shift does
    max_degrees, max_shift = SEVERITIES["affine"][2]
    for seed in range(10):
        _, moved = Degradation("affine", 3).apply(image, mask, rng(seed))
        dy, dx = np.argwhere(moved).mean(0) - np.argwhere(mask).mean(0)
        assert abs(dy) <= max_shift * h + 1 and abs(dx) <= max_shift * w + 1


def write_sample(root: Path) -> Sample:
    image_path = root / "cat" / "test" / "defect" / "000.png"
    mask_path = root / "cat" / "ground_truth" / "defect" / "000_mask.png"
    image_path.parent.mkdir(parents=True)
    mask_path.parent.mkdir(parents=True)
    Image.fromarray(textured(60, 90)).save(image_path)
    mask = np.zeros((60, 90), np.uint8)
    mask[10:30, 20:50] = 255
    Image.fromarray(mask).save(mask_path)
    return Sample(image_path, 1, mask_path, "defect")


def test_degrader_is_deterministic_per_image_and_seed(tmp_path: Path):
    sample = write_sample(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    copy = Sample(tmp_path / "b" / sample.image.relative_to(tmp_path / "a"), 1, tmp_path / "b" / sample.mask.relative_to(tmp_path / "a"))
    transform = Transform(resize=64, crop=64)

    def item(s: Sample, spec: str, seed: int) -> np.ndarray:
        return ImageDataset([s], transform, degrader_from_config(spec, seed, 64))[0]["image"].numpy()

    first = item(sample, "gaussian_noise:3", 0)
    assert np.array_equal(first, item(sample, "gaussian_noise:3", 0))
    assert np.array_equal(first, item(copy, "gaussian_noise:3", 0))  # same path tail, other root
    assert not np.array_equal(first, item(sample, "gaussian_noise:3", 1))
    other = write_sample(tmp_path / "c")
    renamed = other.image.with_name("001.png")
    other.image.rename(renamed)
    assert not np.array_equal(first, item(Sample(renamed, 1, other.mask), "gaussian_noise:3", 0))


def test_photometric_degradations_keep_the_clean_mask(tmp_path: Path):
    sample = write_sample(tmp_path)
    transform = Transform(resize=64, crop=56)
    clean = ImageDataset([sample], transform)[0]
    for kind in ("gaussian_noise", "blur", "brightness_contrast", "jpeg"):
        item = ImageDataset([sample], transform, degrader_from_config(f"{kind}:4", 0, 64))[0]
        assert item["image"].shape == clean["image"].shape
        assert not np.allclose(item["image"].numpy(), clean["image"].numpy())
        assert np.array_equal(item["mask"].numpy(), clean["mask"].numpy())
    moved = ImageDataset([sample], transform, degrader_from_config("affine:5", 3, 64))[0]
    assert moved["mask"].sum() > 0 and not np.array_equal(moved["mask"].numpy(), clean["mask"].numpy())


def record(method: str, degrade: str | None, image_auroc: float, pixel_auroc: float | None, aupro: float | None = None, seed: int = 0) -> dict:
    dataset = {"name": "mvtec", "category": "bottle"} | ({"degrade": degrade} if degrade else {})
    return {
        "method": method, "variant": degrade, "degrade": degrade, "dataset": "mvtec", "category": "bottle",
        "backbone": "lite0", "image_size": 224, "seed": seed, "created": "2025-01-01",
        "metrics": {"image_auroc": image_auroc, "pixel_auroc": pixel_auroc, "aupro": aupro},
        "config": {"method": {"name": method}, "dataset": dataset, "seed": seed, "tag": None},
    }


def test_report_pairs_degraded_runs_with_their_clean_twin():
    records = [
        record("patchcore", None, 1.0, 0.98, 0.9),
        record("patchcore", "gaussian_noise:3", 0.9, 0.95, 0.7),
        record("padim", None, 0.99, None),
        record("padim", "gaussian_noise:3", 0.97, None),
        record("padim", "jpeg:3", 0.5, None, seed=1),  # no clean run with seed 1
    ]
    assert clean_twin_hash(records[0]) == clean_twin_hash(records[1]) != clean_twin_hash(records[2])
    text = "\n".join(degradation_section(records))
    def row(name: str, drops: dict[str, str], worst: str) -> str:  # a mean Δ per headline metric, n/a where the records have none
        return f"| {name} · lite0 | gaussian_noise:3 | 1 | {' | '.join(drops.get(m.name, 'n/a') for m in HEADLINE)} | {worst} |"

    assert row("padim", {"image_auroc": "-2.0"}, "-2.0") in text
    assert row("patchcore", {"image_auroc": "-10.0", "pixel_auroc": "-3.0", "aupro": "-20.0"}, "-10.0") in text
    assert text.index("| padim · lite0") < text.index("| patchcore · lite0")  # smallest drop first
    assert "100.0 → 90.0 (-10.0)" in text and "98.0 → 95.0 (-3.0)" in text
    assert "1 degraded run(s) without a clean run" in text
    assert degradation_section(records[:1]) == []


def test_degraded_run_end_to_end(tmp_path: Path):
    """Clean and degraded PatchCore runs on generated stripes; the report shows the drop."""
    make_synthetic(tmp_path / "data", n_train=8, n_test=4, size=64)
    common = ["method=patchcore", "dataset=synthetic", f"dataset.root={tmp_path / 'data'}", "dataset.n_train=8", "dataset.n_test=4", "dataset.size=64", "dataset.resize=64", "dataset.crop=64", "batch_size=8"]
    clean = run_overrides(common, tmp_path / "results")
    degraded = run_overrides([*common, "++dataset.degrade=blur:5"], tmp_path / "results")
    assert clean["degrade"] is None and clean["variant"] is None
    assert degraded["degrade"] == "blur:5" and degraded["variant"] == "blur:5"
    assert degraded["config_hash"] != clean["config_hash"] and degraded["n_test"] == clean["n_test"]
    assert degraded["metrics"]["pixel_auroc"] != clean["metrics"]["pixel_auroc"]
    text = render([clean, degraded], "records")
    assert "patchcore [blur:5; ≠paper]" in text and "## Robustness: clean vs degraded test images" in text
    assert "| synthetic | stripes | patchcore [≠paper] |" in text
