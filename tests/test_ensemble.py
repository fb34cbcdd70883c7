"""Score ensembles: modified z-scores against numpy/scipy references, calibration modes, config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_overrides
from scipy.stats import median_abs_deviation

from adbench.config.build import build_method
from adbench.errors import ConfigError
from adbench.features.backbones import Backbone
from adbench.methods.ensemble import Ensemble, modified_z, robust_stats

RANDOM_RESNET = {"name": "resnet18", "pretrained": False, "weights": None, "patch_layers": ["layer2", "layer3"]}
LAYERS = ["layer2", "layer3"]


def test_robust_stats_match_scipy():
    scores = np.random.default_rng(0).gamma(2.0, size=(7, 11))
    median, scale = robust_stats(scores)
    assert median == pytest.approx(np.median(scores))
    assert scale == pytest.approx(median_abs_deviation(scores, axis=None, scale="normal"), rel=1e-3)  # 1/Phi^-1(3/4)
    np.testing.assert_allclose(modified_z(scores, median, scale), (scores - np.median(scores)) / scale)


@pytest.fixture(scope="module")
def backbone():
    return Backbone("resnet18", LAYERS, pretrained=False)


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(12, 3, 64, 64, generator=generator), torch.rand(5, 3, 64, 64, generator=generator)


def _members():
    return [
        {"method": "patchcore", "backbone": RANDOM_RESNET, "coreset_ratio": 0.2},
        {"method": "patchcore", "backbone": RANDOM_RESNET, "coreset_ratio": 0.05, "num_neighbors": 3},
    ]


def make_ensemble(backbone: Backbone, members: list, run_backbone: dict | None = RANDOM_RESNET, **params) -> Ensemble:
    """Build as the runner does: the config layer builds the members from their specs."""
    return build_method({"name": "ensemble", "layers": LAYERS, "members": members, **params}, backbone, torch.device("cpu"), run_backbone)


def _batches(x: torch.Tensor, size: int = 4) -> list[dict]:
    return [{"image": chunk} for chunk in x.split(size)]


def test_ensemble_is_the_mean_of_members_modified_z_scores(backbone, images):
    train, test = images
    ensemble = make_ensemble(backbone, _members()).fit(_batches(train))
    assert all(member.backbone is backbone for member in ensemble.members)  # same backbone and layers: shared
    got = ensemble.predict(test)
    expected_scores, expected_maps = [], []
    for member in ensemble.members:  # numpy reference from the members' own predictions
        calib, pred = [member.predict(chunk) for chunk in train.split(4)], member.predict(test)  # the fit's batches
        calib_scores, calib_maps = np.concatenate([c.image_scores for c in calib]), np.concatenate([c.maps for c in calib])
        for values, target, out in ((calib_scores, pred.image_scores, expected_scores), (calib_maps, pred.maps, expected_maps)):
            median = np.median(values)
            mad = np.median(np.abs(values - median))
            out.append((target - median) / (1.4826 * mad))
    np.testing.assert_allclose(got.image_scores, np.mean(expected_scores, axis=0), rtol=1e-6)
    np.testing.assert_allclose(got.maps, np.mean(expected_maps, axis=0), rtol=1e-4, atol=1e-4)
    assert ensemble.memory_bank_bytes > sum(m.memory_bank_bytes for m in ensemble.members)

    clone = make_ensemble(backbone, _members()).load_fitted_state(ensemble.fitted_state())
    np.testing.assert_allclose(clone.predict(test).image_scores, got.image_scores, rtol=1e-6)


def test_holdout_calibration_fits_on_the_rest(backbone, images):
    train, _ = images
    ensemble = make_ensemble(backbone, _members()[:1], calibration="holdout", holdout_fraction=0.25)
    ensemble.fit(_batches(train))
    assert ensemble.fit_info["calibration_images"] == 3
    member = ensemble.fit_info["members"][0]
    assert member["fit_info"]["patches"] == 9 * 8 * 8  # 9 fitted images of 8 x 8 patches


def test_memorising_member_is_refused(backbone, images):
    ensemble = make_ensemble(backbone, [{"method": "patchcore", "backbone": RANDOM_RESNET, "coreset_ratio": 1.0}])
    with pytest.raises(ValueError, match="MAD 0.*calibration=holdout"):
        ensemble.fit(_batches(images[0]))


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([], "members is empty"),
        ([{"backbone": "efficientnet_lite0"}], r"members\[0\] must be a mapping with a 'method' key"),
        ([{"method": "no_such_method", "backbone": RANDOM_RESNET}], "unknown method.members.0..method 'no_such_method'"),
        ([{"method": "patchcore", "backbone": "no_such_backbone"}], "unknown method.members.0..backbone"),
        ([{"method": "patchcore", "backbone": RANDOM_RESNET, "no_such_key": 1}], r"unknown key.*members\[0\]\.no_such_key"),
        ([{"method": "patchcore"}], "names no backbone"),
    ],
)
def test_bad_member_specs_are_config_errors(backbone, members, message):
    with pytest.raises(ConfigError, match=message):
        make_ensemble(backbone, members, run_backbone=None)


def test_ensemble_run_on_synthetic_data(tmp_path):
    members = "[{method: patchcore, coreset_ratio: 0.1}, {method: patchcore, backbone: efficientnet_lite1, coreset_ratio: 0.1}]"
    record = run_overrides(
        ["method=ensemble", f"method.members={members}", "dataset=synthetic", f"dataset.root={tmp_path / 'data'}"], tmp_path
    )
    assert [m["member"] for m in record["fit_info"]["members"]] == ["patchcore@tf_efficientnet_lite0", "patchcore@tf_efficientnet_lite1"]
    assert record["metrics"]["image_auroc"] >= 0.9 and record["metrics"]["pixel_auroc"] >= 0.9
