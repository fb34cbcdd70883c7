"""PaDiM: per-position Mahalanobis against numpy/scipy, same-size rule, save/load, real bottle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_overrides
from scipy.spatial.distance import mahalanobis

from adbench.errors import ConfigError, DataError
from adbench.features.backbones import Backbone
from adbench.features.patches import random_channel_subset
from adbench.methods import NotFittedError, method_class

LAYERS = ["blocks.1", "blocks.2", "blocks.4"]


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    torch.manual_seed(0)
    return Backbone("tf_efficientnet_lite0", LAYERS, pretrained=False)


@pytest.fixture(scope="module")
def fitted(backbone):
    """PaDiM (d = 12, blocks of 5 positions) fitted on 30 random 64x64 images in two batches."""
    torch.manual_seed(1)
    train = torch.randn(30, 3, 64, 64)
    model = method_class("padim")(backbone, LAYERS, dim=12, seed=3, block_bytes=4 * 12 * 12 * 5)
    return model.fit([{"image": train[:16]}, {"image": train[16:]}]), train


def test_embedding_is_the_seeded_channel_subset(fitted, backbone) -> None:
    model, train = fitted
    maps = backbone(train[:2])  # blocks.1 16x16, blocks.2 8x8, blocks.4 4x4: deeper maps replicated (nearest)
    full = torch.cat([maps["blocks.1"], *(maps[layer].repeat_interleave(r, 2).repeat_interleave(r, 3) for layer, r in (("blocks.2", 2), ("blocks.4", 4)))], 1)
    assert full.shape[1] == 24 + 40 + 112
    expected = full[:, random_channel_subset(176, 12, 3)]
    torch.testing.assert_close(model.embed(train[:2]), expected)


def test_mahalanobis_matches_scipy(fitted) -> None:
    model, train = fitted
    x_train = model.embed(train).double().numpy()  # (N, d, h, w)
    test = torch.randn(3, 3, 64, 64) * 1.5
    x_test = model.embed(test).double().numpy()
    n, d, h, w = x_train.shape
    expected = np.empty((3, h, w))
    for i in range(h):
        for j in range(w):
            samples = x_train[:, :, i, j]
            cov_inv = np.linalg.inv(np.cov(samples, rowvar=False) + 0.01 * np.eye(d))
            mu = samples.mean(0)
            for b in range(3):
                expected[b, i, j] = mahalanobis(x_test[b, :, i, j], mu, cov_inv)
    got = model.patch_scores(model.embed(test)).double().numpy()
    # float32 Cholesky factors and scores vs float64 scipy (same eps I, no anomalib term): measured 3e-7 relative
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # float32 shifted sums vs a float64 mean: measured 2.4e-7 absolute
    torch.testing.assert_close(model.mean.reshape(h, w, d).permute(2, 0, 1), torch.from_numpy(x_train.mean(0)).float(), rtol=1e-5, atol=1e-6)

    prediction = model.predict(test)
    assert prediction.maps.shape == (3, 64, 64)
    np.testing.assert_allclose(prediction.image_scores, prediction.maps.reshape(3, -1).max(1), rtol=1e-6)
    assert model.memory_bank_shape == (h, w, d, d)
    assert model.memory_bank_bytes == (h * w * d * d + h * w * d) * 4 + d * 8


def test_save_load_round_trip(fitted, backbone) -> None:
    model, _ = fitted
    test = torch.randn(2, 3, 64, 64)
    fresh = method_class("padim")(backbone, LAYERS, dim=12, seed=99)
    fresh.load_fitted_state(model.fitted_state())
    np.testing.assert_allclose(fresh.predict(test).maps, model.predict(test).maps, rtol=1e-6)


def test_images_must_share_the_training_size(fitted, backbone) -> None:
    model, _ = fitted
    with pytest.raises(DataError, match=r"share one size.*\(96, 96\).*\(64, 64\)"):
        model.predict(torch.randn(1, 3, 96, 96))
    fresh = method_class("padim")(backbone, LAYERS, dim=12)
    with pytest.raises(DataError, match="share one size"):
        fresh.fit([{"image": torch.randn(2, 3, 64, 64)}, {"image": torch.randn(2, 3, 96, 96)}])


def test_predict_before_fit_is_refused(backbone) -> None:
    with pytest.raises(NotFittedError, match="before fit"):
        method_class("padim")(backbone, LAYERS, dim=12).predict(torch.randn(1, 3, 64, 64))


def test_bad_config(backbone) -> None:
    with pytest.raises(ConfigError, match="method.dim=500"):
        method_class("padim")(backbone, LAYERS, dim=500)


def test_padim_on_real_bottle(data_root, tmp_path) -> None:
    record = run_overrides(["method=padim", "dataset=mvtec"], tmp_path)
    assert record["metrics"]["image_auroc"] > 0.95
    assert record["metrics"]["pixel_auroc"] >= 0.93
    assert record["memory_bank"]["shape"] == [56, 56, 100, 100]
