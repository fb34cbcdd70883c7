"""SPADE: image kNN and pixel kNN against brute force, save/load, real bottle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_overrides

from adbench.errors import ConfigError
from adbench.features.backbones import Backbone
from adbench.methods import NotFittedError, method_class

LAYERS = ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    torch.manual_seed(0)
    return Backbone("tf_efficientnet_lite0", LAYERS, pretrained=False)


@pytest.fixture(scope="module")
def fitted(backbone):
    torch.manual_seed(1)
    train = torch.randn(12, 3, 64, 64)
    model = method_class("spade")(backbone, LAYERS, top_k=3, kappa=2)
    return model.fit([{"image": train[:5]}, {"image": train[5:]}]), train


def brute_force_image_knn(backbone, train, test, k):
    f_train = backbone(train)["blocks.6"].mean((2, 3)).double().numpy()
    f_test = backbone(test)["blocks.6"].mean((2, 3)).double().numpy()
    dist = np.sqrt(((f_test[:, None] - f_train[None]) ** 2).sum(-1))  # (B, N) Euclidean distances
    order = np.argsort(dist, axis=1)[:, :k]
    return np.take_along_axis(dist, order, 1).mean(1), order


def test_image_knn_matches_brute_force(fitted, backbone) -> None:
    model, train = fitted
    test = torch.randn(4, 3, 64, 64)
    expected, order = brute_force_image_knn(backbone, train, test, 3)
    scores, neighbours = model.image_knn(backbone(test)["blocks.6"].mean((2, 3)))
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-6)
    assert np.array_equal(np.sort(neighbours.numpy(), 1), np.sort(order, 1))
    np.testing.assert_allclose(model.predict(test).image_scores, expected, rtol=1e-6)
    model.compute_maps = False  # what the runner sets for data without masks (elpv)
    try:
        image_only = model.predict(test)
    finally:
        model.compute_maps = True
    assert image_only.maps is None
    np.testing.assert_allclose(image_only.image_scores, expected, rtol=1e-6)


def test_pixel_knn_matches_brute_force(fitted, backbone) -> None:
    model, train = fitted
    test = torch.randn(2, 3, 64, 64)
    _, order = brute_force_image_knn(backbone, train, test, 3)
    train_maps, test_maps = backbone(train), backbone(test)
    expected = torch.zeros(2, 64, 64, dtype=torch.float64)
    for b in range(2):  # SPADE-pytorch: per layer, distances upsampled to the image, then the mean over layers
        for layer in LAYERS[:3]:
            gallery = train_maps[layer][order[b]].double()  # (K, C, h, w)
            gallery = gallery.permute(0, 2, 3, 1).reshape(-1, gallery.shape[1])
            query = test_maps[layer][b].double().permute(1, 2, 0)  # (h, w, C)
            dist = ((query[:, :, None, :] - gallery[None, None]) ** 2).sum(-1).sqrt()  # (h, w, K*h*w)
            nearest = dist.topk(2, dim=-1, largest=False).values.mean(-1)  # kappa = 2
            expected[b] += F.interpolate(nearest[None, None], size=(64, 64), mode="bilinear", align_corners=False)[0, 0] / 3
    pyramid = [test_maps[layer] for layer in LAYERS[:3]]
    got = model.pixel_scores(pyramid, torch.from_numpy(order), (64, 64))
    # float32 features and distances vs a float64 reference: measured 1.7e-7 relative, 2e-6 absolute
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())

    prediction = model.predict(test)
    assert prediction.maps.shape == (2, 64, 64)
    per_image = 24 * 16 * 16 + 40 * 8 * 8 + 112 * 4 * 4
    assert model.memory_bank_shape == (12, 320 + per_image)
    assert model.memory_bank_bytes == 12 * (320 + per_image) * 4 + 3 * 3 * 8


def test_painted_defect_scores_higher_and_is_localised() -> None:
    torch.manual_seed(2)
    base = torch.linspace(-1, 1, 96).view(1, 1, 1, 96).expand(1, 3, 96, 96)
    model = method_class("spade")(Backbone("tf_efficientnet_lite0", LAYERS), LAYERS, top_k=3)
    model.fit([{"image": base + 0.05 * torch.randn(6, 3, 96, 96)}])
    test = base + 0.05 * torch.randn(2, 3, 96, 96)
    test[1, :, 40:56, 40:56] = -1.0
    prediction = model.predict(test)
    assert prediction.maps[1].max() > prediction.maps[0].max()
    row, col = np.unravel_index(prediction.maps[1].argmax(), (96, 96))
    assert 28 <= row <= 68 and 28 <= col <= 68


def test_save_load_round_trip(fitted, backbone) -> None:
    model, _ = fitted
    test = torch.randn(2, 3, 64, 64)
    fresh = method_class("spade")(backbone, LAYERS, top_k=3, kappa=2)
    fresh.load_fitted_state(model.fitted_state())
    expected = model.predict(test)
    got = fresh.predict(test)
    np.testing.assert_allclose(got.image_scores, expected.image_scores, rtol=1e-6)
    np.testing.assert_allclose(got.maps, expected.maps, rtol=1e-6)


def test_predict_before_fit_is_refused(backbone) -> None:
    with pytest.raises(NotFittedError, match="before fit"):
        method_class("spade")(backbone, LAYERS).predict(torch.randn(1, 3, 64, 64))


def test_bad_config(backbone) -> None:
    with pytest.raises(ConfigError, match="pixel layers followed by the image layer"):
        method_class("spade")(backbone, ["blocks.6"])
    with pytest.raises(ConfigError, match="method.top_k=0"):
        method_class("spade")(backbone, LAYERS, top_k=0)


def test_spade_on_real_bottle(data_root, tmp_path) -> None:
    # K = 5 nearest images (the common re-implementations' value; paper 50): a 10x smaller pixel gallery
    record = run_overrides(["method=spade", "dataset=mvtec", "method.top_k=5"], tmp_path)
    assert record["metrics"]["image_auroc"] > 0.95
    assert record["metrics"]["pixel_auroc"] >= 0.93
    assert record["memory_bank"]["shape"][0] == record["n_train"] == 209
