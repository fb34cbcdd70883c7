"""Gaussian AD: scores against a numpy Ledoit-Wolf reference, image-level only, real bottle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_overrides

from adbench.errors import DataError
from adbench.features.backbones import Backbone
from adbench.methods import NotFittedError, method_class

LAYERS = ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    torch.manual_seed(0)
    return Backbone("tf_efficientnet_lite0", LAYERS, pretrained=False)


def ledoit_wolf_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance, shrunk towards mu I with the Ledoit-Wolf (2004) optimal weight."""
    n, p = x.shape
    mean = x.mean(0)
    xc = x - mean
    sample = xc.T @ xc / n
    mu = np.trace(sample) / p
    target_gap = ((sample - mu * np.eye(p)) ** 2).sum() / p
    spread = sum(((np.outer(row, row) - sample) ** 2).sum() for row in xc) / n**2 / p
    shrinkage = min(spread, target_gap) / target_gap
    return mean, (1 - shrinkage) * sample + shrinkage * mu * np.eye(p)


def test_scores_match_numpy_reference(backbone) -> None:
    torch.manual_seed(1)
    train, test = torch.randn(40, 3, 64, 64), torch.randn(5, 3, 64, 64) * 1.3
    model = method_class("gaussian_ad")(backbone, LAYERS)
    model.fit([{"image": train[:25]}, {"image": train[25:]}])
    train_maps, test_maps = backbone(train), backbone(test)
    expected = np.zeros(5)
    for layer in LAYERS:
        mean, cov = ledoit_wolf_reference(train_maps[layer].mean((2, 3)).double().numpy())
        diff = test_maps[layer].mean((2, 3)).double().numpy() - mean
        expected += np.sqrt(np.einsum("bi,ij,bj->b", diff, np.linalg.inv(cov), diff))
    prediction = model.predict(test)
    assert prediction.maps is None and not model.pixel_level
    np.testing.assert_allclose(prediction.image_scores, expected, rtol=1e-6)

    channels = [24, 40, 112, 320]
    assert model.memory_bank_bytes == sum(c + c * c for c in channels) * 8
    fresh = method_class("gaussian_ad")(backbone, LAYERS).load_fitted_state(model.fitted_state())
    np.testing.assert_allclose(fresh.predict(test).image_scores, prediction.image_scores, rtol=1e-12)


def test_predict_before_fit_is_refused(backbone) -> None:
    with pytest.raises(NotFittedError, match="before fit"):
        method_class("gaussian_ad")(backbone, LAYERS).predict(torch.randn(1, 3, 64, 64))


def test_needs_two_training_images(backbone) -> None:
    with pytest.raises(DataError, match="at least 2 training images"):
        method_class("gaussian_ad")(backbone, LAYERS).fit([{"image": torch.randn(1, 3, 64, 64)}])


def test_gaussian_ad_on_real_bottle(data_root, tmp_path) -> None:
    record = run_overrides(["method=gaussian_ad", "dataset=mvtec"], tmp_path)
    assert record["metrics"]["image_auroc"] > 0.95
    assert record["metrics"]["pixel_auroc"] is None and record["metrics"]["aupro"] is None
    assert record["pixel_metrics"].startswith("not applicable")
