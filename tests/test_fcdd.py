"""FCDD: the HSC losses by hand, the receptive-field Gaussian upsampling, confetti anomalies, the
measured receptive field of Lite0, save/load, and real MVTec AD bottle defects localised."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import run_overrides
from scipy.signal.windows import gaussian

from adbench.data.dataset import ImageDataset
from adbench.data.sources import load_split
from adbench.data.transforms import Transform
from adbench.errors import ConfigError
from adbench.features.backbones import Backbone
from adbench.methods import NotFittedError, method_class
from adbench.methods.fcdd import (
    ReceptiveField,
    confetti,
    gaussian_kernel,
    hsc_loss,
    measure_receptive_field,
    pixel_hsc_loss,
    pseudo_huber,
    receptive_upsample,
)
from adbench.metrics import evaluate


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return Backbone("tf_efficientnet_lite0", ["blocks.2"])


def test_pseudo_huber_and_hsc_loss_by_hand() -> None:
    phi = torch.tensor([0.0, 1.0, -2.0])
    assert torch.allclose(pseudo_huber(phi), torch.tensor([0.0, math.sqrt(2) - 1, math.sqrt(5) - 1]))
    a = torch.tensor([[[0.5, 1.5]], [[1.0, 3.0]]])  # (B=2, u=1, v=2): means 1.0 (normal) and 2.0 (anomalous)
    expected = (1.0 - math.log(1 - math.exp(-2.0))) / 2
    assert hsc_loss(a, torch.tensor([0, 1])).item() == pytest.approx(expected, rel=1e-6)
    assert hsc_loss(a, torch.tensor([0, 0])).item() == pytest.approx(1.5)
    # pushing an anomaly's A(X) up lowers its loss; the loss is finite even at A(X) = 0
    assert hsc_loss(a * 2, torch.tensor([1, 1])) < hsc_loss(a, torch.tensor([1, 1]))
    assert torch.isfinite(hsc_loss(torch.zeros(1, 2, 2), torch.tensor([1])))


def test_pixel_hsc_loss_by_hand() -> None:
    a_up = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 8.0]]])
    masks = torch.tensor([[[0, 0], [0, 0]], [[0, 0], [0, 1]]])
    sample0 = (1 + 2 + 3 + 4) / 4  # no anomalous pixel: normal term only
    sample1 = (1 + 2 + 3) / 4 - math.log(1 - math.exp(-8 / 4))  # both terms average over all m = 4 pixels
    assert pixel_hsc_loss(a_up, masks).item() == pytest.approx((sample0 + sample1) / 2, rel=1e-6)


def test_gaussian_kernel_matches_scipy() -> None:
    for size, sigma in ((67, 12.0), (9, 2.0)):
        window = gaussian(size, sigma)
        np.testing.assert_allclose(gaussian_kernel(size, sigma).numpy(), np.outer(window, window), rtol=1e-6, atol=1e-7)
    assert gaussian_kernel(67, 12.0)[33, 33] == 1.0


def test_receptive_upsample_places_each_score_as_a_gaussian_over_its_field() -> None:
    field = ReceptiveField(size=9, stride=4, offset=(1.0, 3.0))
    scores = torch.zeros(2, 5, 6)
    scores[0, 1, 2] = 2.0  # centred on input pixel (1 + 1 * 4, 3 + 2 * 4) = (5, 11)
    scores[1, 0, 0] = 1.0  # centred on (1, 3): its field is clipped at the top border
    up = receptive_upsample(scores, (20, 24), field, sigma=2.0)
    assert up.shape == (2, 20, 24)
    rows, cols = np.arange(20)[:, None], np.arange(24)[None, :]
    for value, (cy, cx), image in ((2.0, (5, 11), up[0]), (1.0, (1, 3), up[1])):
        inside = (np.abs(rows - cy) <= 4) & (np.abs(cols - cx) <= 4)
        expected = value * np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / 8.0) * inside
        np.testing.assert_allclose(image.numpy(), expected, atol=1e-6)
    # a map larger than the transposed convolution's reach is zero-padded, not misaligned
    assert receptive_upsample(scores, (40, 44), field, 2.0)[0, 5, 11] == pytest.approx(2.0)


def test_confetti_blobs_are_local_reproducible_and_inverted_on_white() -> None:
    images = torch.rand(3, 3, 96, 96, generator=torch.Generator().manual_seed(1)) * 0.5
    corrupted, masks = confetti(images, 2.0, (8, 54), torch.Generator().manual_seed(0))
    assert corrupted.shape == images.shape and masks.shape == (3, 96, 96)
    assert corrupted.min() >= 0 and corrupted.max() <= 1
    area = masks.flatten(1).float().mean(1)
    assert torch.all((area > 0) & (area < 0.9))  # at least one blob per image, most of the image left alone
    assert torch.all((corrupted - images).abs().flatten(1).amax(1) > 0.2)  # and each one clearly visible
    again, _ = confetti(images, 2.0, (8, 54), torch.Generator().manual_seed(0))
    assert torch.equal(corrupted, again)
    white = torch.ones(1, 3, 64, 64)  # adding cannot change a white image: the noise is subtracted
    darkened, white_masks = confetti(white, 1.0, (20, 20), torch.Generator().manual_seed(0))
    assert white_masks.any() and darkened.min() < 0.9


def test_measured_receptive_field_of_lite0_blocks2(lite0) -> None:
    # kernels 3 (stem, /2), 3, 3 (/2), 3, 5 (/2), 5: 1 + 2*1 + 2*2 + 2*2 + 2*4 + 4*4 + 4*8 = 67 px.
    # TF "same" padding puts the odd padding pixel of a stride-2 conv at the bottom/right: on 224 px the
    # first output pixel is centred at 0 + 1 (stem) → 1 + 1*2 (blocks.1) → 3 + 1*4 (blocks.2) = 7.
    assert measure_receptive_field(lite0, "blocks.2", (224, 224)) == ReceptiveField(67, 8, (7.0, 7.0))


def test_bad_config_is_rejected(lite0) -> None:
    fcdd = method_class("fcdd")
    with pytest.raises(ConfigError, match="method.layers"):
        fcdd(lite0, ["blocks.2", "blocks.2"])
    with pytest.raises(ConfigError, match="method.image_score"):
        fcdd(lite0, ["blocks.2"], image_score="median")
    with pytest.raises(ValueError, match="needs anomalies"):
        fcdd(lite0, ["blocks.2"], confetti_per_image=0).fit([{"image": torch.zeros(2, 3, 64, 64)}])


def test_predict_before_fit_is_refused(lite0) -> None:
    with pytest.raises(NotFittedError, match="before fit"):  # an untrained head would give random scores
        method_class("fcdd")(lite0, ["blocks.2"]).predict(torch.zeros(1, 3, 64, 64))


def test_image_score_is_the_mean_of_a_not_of_the_upsampled_map(lite0) -> None:
    model = method_class("fcdd")(lite0, ["blocks.2"], epochs=1, confetti_per_image=1)
    model.fit([{"image": torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))}])
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = model.heatmap(model.features(images))  # (2, 8, 8) A(X)
    prediction = model.predict(images)
    np.testing.assert_allclose(prediction.image_scores, a.flatten(1).mean(1).double().numpy(), rtol=1e-6)
    assert not np.allclose(prediction.image_scores, prediction.maps.reshape(2, -1).mean(1), rtol=1e-3)


def test_training_cuts_the_hsc_loss(lite0) -> None:
    """Training must matter: the HSC loss (Eq. 3) of the training images and confetti made from them, drawn apart from
    training, is at most 3/4 of the untrained head's (the same seed gives the same head; measured 0.70 vs 1.27 after
    80 steps). It fails when the optimiser step does nothing (ratio 1)."""
    images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    args = dict(epochs=20, train_batch_size=2, confetti_per_image=1, seed=0)
    trained = method_class("fcdd")(lite0, ["blocks.2"], **args).fit([{"image": images}])
    untrained = method_class("fcdd")(lite0, ["blocks.2"], **args)
    corrupted, _ = trained._synthetic(images, torch.Generator().manual_seed(7))
    labels = torch.tensor([0] * 8 + [1] * 8)
    with torch.no_grad():
        features = trained.features(torch.cat([images, corrupted]))
        loss, before = (hsc_loss(model.heatmap(features), labels).item() for model in (trained, untrained))
    assert loss <= 0.75 * before
    assert any(d.startswith("Adam") for d in trained.deviations)
    assert not any(d.startswith("Adam") for d in method_class("fcdd")(lite0, ["blocks.2"], optimizer="sgd").deviations)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_early_stopping_validates_on_held_out_training_images_only(lite0, optimizer) -> None:
    """Both of the authors' optimisers; early stopping on held-out normal images and the confetti made from them."""
    model = method_class("fcdd")(lite0, ["blocks.2"], epochs=6, train_batch_size=2, confetti_per_image=1, val_fraction=0.25,
                                 patience=2, optimizer=optimizer)
    model.fit([{"image": torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))}])
    info = model.fit_info
    assert info["selection"].startswith("early stopping on the loss of 2 validation items")
    assert all("val_loss" in e for e in info["history"]) and 1 <= info["best_epoch"] <= info["epochs_run"] <= 6


def test_save_load_roundtrip_and_labelled_anomalies(lite0) -> None:
    fcdd = method_class("fcdd")
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 64, 64, generator=generator) * 0.1
    labels, masks = torch.tensor([0, 0, 0, 0, 0, 1]), torch.zeros(6, 64, 64)
    masks[5, 20:40, 20:40] = 1
    images[5, :, 20:40, 20:40] = 2.0  # a labelled real anomaly with its ground-truth map
    model = fcdd(lite0, ["blocks.2"], epochs=2, confetti_per_image=1, pixel_loss=True)
    model.fit([{"image": images, "label": labels, "mask": masks}])
    assert model.fit_info["labelled_anomalies"] == 1 and model.fit_info["synthetic_anomalies"] == 5
    assert model.fit_info["receptive_field"] == 67
    restored = fcdd(lite0, ["blocks.2"], seed=1).load_fitted_state(model.fitted_state())
    before, after = model.predict(images[:2]), restored.predict(images[:2])
    assert before.maps.shape == (2, 64, 64)
    np.testing.assert_allclose(before.maps, after.maps, rtol=1e-6)
    assert model.memory_bank_bytes == sum(p.numel() * 4 for p in model.head.parameters())


def test_fcdd_localises_real_bottle_defects(data_root, lite0) -> None:
    """A third of bottle's training images, one synthetic anomaly each, 30 epochs of 16 + 16 (a shortened run: the
    default 64 + 64 would leave 2 steps per epoch): still P-AUROC > 0.85."""
    split = load_split("mvtec", str(data_root / "mvtec"), "bottle")
    transform = Transform(256, 224, lite0.mean, lite0.std)
    loader = torch.utils.data.DataLoader(ImageDataset(split.train[::3], transform), batch_size=16)
    model = method_class("fcdd")(lite0, ["blocks.2"], head_channels=[128], epochs=30, train_batch_size=16, confetti_per_image=1)
    model.fit(loader)
    labels, scores, masks, maps = [], [], [], []
    for batch in torch.utils.data.DataLoader(ImageDataset(split.test, transform), batch_size=16):
        prediction = model.predict(batch["image"])
        labels.append(batch["label"].numpy())
        scores.append(prediction.image_scores)
        masks.append(batch["mask"].numpy().astype(bool))
        maps.append(prediction.maps)
    metrics = evaluate(np.concatenate(labels), np.concatenate(scores), np.concatenate(masks), np.concatenate(maps))
    assert metrics["pixel_auroc"] > 0.85
    assert metrics["image_auroc"] > 0.8


def test_labelled_anomalies_move_from_test_to_training(tmp_path) -> None:
    """Semi-supervised FCDD: real anomalies train with their masks and leave the test set."""
    data = ["dataset=synthetic", f"dataset.root={tmp_path / 'data'}", "dataset.n_test=6"]
    clean = run_overrides(["method=fcdd", "method.epochs=2", *data], tmp_path / "clean")
    record = run_overrides(["method=fcdd", "method.epochs=2", "method.labelled_anomalies=2", "method.pixel_loss=true", *data], tmp_path / "semi")
    assert len(record["train_anomalies"]) == 2 and record["n_test"] == clean["n_test"] - 2
    assert record["fit_info"]["labelled_anomalies"] == 2
    assert record["config_hash"] != clean["config_hash"] and clean["train_anomalies"] == []
    with pytest.raises(ConfigError, match="labelled_anomalies"):
        run_overrides(["method=fcdd", "method.labelled_anomalies=99", *data], tmp_path / "too_many")
    with pytest.raises(ConfigError, match="method=patchcore trains on normal images only"):
        run_overrides(["method=patchcore", "+method.labelled_anomalies=1", *data], tmp_path / "patchcore")
