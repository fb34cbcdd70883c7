"""Parity with independent references on small fixed inputs: golden.npz, written by make_golden.py (anomalib
2.7 and transcriptions of patchcore-inspection and of the MVTec AD evaluation script). No anomalib needed here.

Methods see the fixed feature maps through ``FixedMaps``, a backbone stand-in that returns the stored maps
of the images it is given (image i carries its index in pixel (0, 0, 0)); everything after the backbone is
adbench's own code. Tolerances: float32 arithmetic in a different order (rtol 1e-5 .. 1e-4), and where
stated a documented difference (PaDiM: anomalib adds 1e-5 I to the regularised covariance).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from adbench.features.coreset import greedy_coreset
from adbench.features.maps import upsample_scores
from adbench.features.patches import flatten_patches, patch_features
from adbench.methods import method_class
from adbench.metrics.aupro import aupro

GOLDEN = np.load(Path(__file__).with_name("golden.npz"))


def golden(key: str) -> torch.Tensor:
    return torch.from_numpy(GOLDEN[key])


class FixedMaps(nn.Module):
    """A backbone stand-in returning stored layer maps: ``maps[layer]`` (N, C, h, w) for the images it gets."""

    def __init__(self, maps: dict[str, torch.Tensor]):
        super().__init__()
        self.maps, self.layers = maps, list(maps)
        self.channels = {name: m.shape[1] for name, m in maps.items()}

    @staticmethod
    def images(indices: range | list[int], size: int = 32) -> torch.Tensor:
        images = torch.zeros(len(indices), 3, size, size)
        images[:, 0, 0, 0] = torch.tensor(list(indices), dtype=torch.float32)
        return images

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        index = images[:, 0, 0, 0].round().long()
        return {name: m[index] for name, m in self.maps.items()}


def test_patchcore_local_aggregation_and_projection() -> None:
    """3x3 zero-padded mean + bilinear concatenation = anomalib's embedding; with embed_dim: the per-layer
    pooling then aggregation of patchcore-inspection (channels 8 and 16, multiples of the target 8)."""
    maps = [golden("pc_layer2"), golden("pc_layer3")]
    np.testing.assert_allclose(patch_features(maps, 3).numpy(), GOLDEN["pc_concat"], rtol=1e-5, atol=1e-6)
    projected = flatten_patches(patch_features(maps, 3, dim=8, mode="avgpool"))
    np.testing.assert_allclose(projected.numpy(), GOLDEN["pc_projected"], rtol=1e-5, atol=1e-6)


def test_coreset_picks_match_anomalib_k_center_greedy() -> None:
    points, seed = golden("coreset_points"), int(GOLDEN["coreset_seed"])
    picks = greedy_coreset(points, len(GOLDEN["coreset_picks"]), seed)
    assert picks.tolist() == GOLDEN["coreset_picks"].tolist()


def test_patch_scores_and_eq7_image_scores_match_anomalib() -> None:
    embedding, bank = golden("ps_embedding"), golden("ps_bank")
    backbone = FixedMaps({"layer": embedding})
    model = method_class("patchcore")(backbone, ["layer"], patch_size=1, embed_dim=None, reweight=True, reweight_neighbors=9)
    model.load_fitted_state({"bank": bank})
    scores = model.patch_scores(embedding)
    np.testing.assert_allclose(scores.numpy(), GOLDEN["ps_patch_scores"], rtol=1e-5, atol=1e-6)
    prediction = model.predict(FixedMaps.images(range(2), size=40))
    np.testing.assert_allclose(prediction.image_scores, GOLDEN["ps_image_scores_eq7"], rtol=1e-5)
    assert np.all(prediction.image_scores < GOLDEN["ps_patch_scores"].reshape(2, -1).max(1))  # Eq. 7 weight < 1


def test_blurred_anomaly_map_matches_anomalib() -> None:
    maps = upsample_scores(golden("map_patch_scores"), (56, 56), sigma=4.0)
    np.testing.assert_allclose(maps.numpy(), GOLDEN["map_blurred"], rtol=1e-5, atol=1e-6)


def test_padim_embedding_gaussian_and_mahalanobis_map_match_anomalib() -> None:
    names = ["layer1", "layer2", "layer3"]
    maps = {n: torch.cat([golden(f"padim_train{i}"), golden(f"padim_test{i}")]) for i, n in enumerate(names)}
    model = method_class("padim")(FixedMaps(maps), names, dim=10, seed=3)
    assert model.channel_index.tolist() == GOLDEN["padim_index"].tolist()
    model.fit([{"image": FixedMaps.images(range(7))}, {"image": FixedMaps.images(range(7, 12))}])
    test = FixedMaps.images(range(12, 15))
    embedding = model.embed(test)
    np.testing.assert_allclose(embedding.numpy(), GOLDEN["padim_embedding"], rtol=1e-6)
    np.testing.assert_allclose(model.mean.T.numpy(), GOLDEN["padim_mean"], rtol=1e-5, atol=1e-6)
    factor = model.inverse_factor.double()  # Sigma^-1 = W^T W
    covariance = torch.linalg.inv(factor.transpose(1, 2) @ factor).numpy()
    np.testing.assert_allclose(covariance, GOLDEN["padim_covariance"], rtol=1e-4, atol=1e-5)
    # anomalib inverts Sigma + 1e-5 I: relative differences of order 1e-5 / 0.01
    np.testing.assert_allclose(model.patch_scores(embedding).numpy(), GOLDEN["padim_distance"], rtol=2e-3)
    np.testing.assert_allclose(model.predict(test).maps, GOLDEN["padim_map"], rtol=2e-3)


def _cfa_model():
    names = ["layer1", "layer2", "layer3"]
    backbone = FixedMaps({n: golden(f"cfa_map{i}") for i, n in enumerate(names)})
    model = method_class("cfa")(backbone, names, feature_scale="channels", width_factor=2, gamma_c=1.0, num_neighbors=3,
                                num_hard_negatives=3, alpha=0.1)
    state = {
        "heads.0.descriptor.conv.weight": golden("cfa_weight"),
        "heads.0.descriptor.conv.bias": golden("cfa_bias"),
        "heads.0.radius": torch.tensor([float(GOLDEN["cfa_radius"])]),
        "bank": golden("cfa_bank")[None],
        "score_stats": torch.tensor([[0.0, 1.0]]),
    }
    return model.load_fitted_state(state)


def test_cfa_descriptor_losses_and_scores_match_anomalib() -> None:
    model = _cfa_model()
    head, index, bank = model.heads[0], model._indices[0], model.bank[0]
    images = FixedMaps.images(range(2))
    features = model.embed(images)
    with torch.no_grad():
        np.testing.assert_allclose(head.descriptor(features).numpy(), GOLDEN["cfa_phi"], rtol=1e-4, atol=1e-5)
        att, rep = model.cfa_losses(head, features, bank, index)
    assert GOLDEN["cfa_rep_active"] > 0 and rep.item() > 0  # both hinges act on this batch
    # the official code and anomalib scale L_CFA by 1 / nu = 1000 (left out here: AdamW is invariant to it)
    assert 1000 * (att.item() + rep.item()) == pytest.approx(float(GOLDEN["cfa_loss_x1000"]), rel=1e-4)
    # anomalib expands ||a - c||^2 = ||a||^2 + ||c||^2 - 2 a.c in float32: ~1e-4 absolute error near a centre
    np.testing.assert_allclose(model._patch_scores(head, index, features).numpy(), GOLDEN["cfa_scores"], rtol=1e-4, atol=5e-4)
    np.testing.assert_allclose(model.predict(images).maps, GOLDEN["cfa_anomaly_map"], rtol=1e-4, atol=5e-4)


def test_aupro_matches_the_mvtec_definition() -> None:
    value = aupro(GOLDEN["aupro_maps"], GOLDEN["aupro_masks"], limit=0.3)
    assert value == pytest.approx(float(GOLDEN["aupro_mvtec"]), abs=1e-6)
