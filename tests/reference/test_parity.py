"""Parity with independent references on small fixed inputs: golden.npz, written by make_golden.py (anomalib
2.7 and transcriptions of patchcore-inspection and of the MVTec AD evaluation script), and golden_training.npz,
written by make_training_golden.py (float64 transcriptions of the CFA and FCDD authors' code and of ReConPatch's
equations: one training step, a bank initialisation, the training losses). No anomalib needed here.

Methods see the fixed feature maps through ``FixedMaps``, a backbone stand-in that returns the stored maps
of the images it is given (image i carries its index in pixel (0, 0, 0)); everything after the backbone is
adbench's own code. Every tolerance above 1e-6 says why on its line: float32 arithmetic in a different order
(rtol 1e-5 .. 1e-4), or a documented difference (PaDiM: anomalib adds 1e-5 I to the regularised covariance).
The training references run in float64 and so does adbench against them, so they agree to ~1e-12.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from adbench.features.coreset import greedy_coreset
from adbench.features.maps import upsample_scores
from adbench.features.nn_search import NearestNeighbours
from adbench.features.patches import flatten_patches, patch_features
from adbench.methods import method_class
from adbench.methods.cfa import kmeans_centres
from adbench.methods.fcdd import ReceptiveField, hsc_loss, pixel_hsc_loss, pseudo_huber, receptive_upsample
from adbench.methods.reconpatch import contextual_similarity, ema_copy, pairwise_similarity, relaxed_contrastive_loss
from adbench.metrics.aupro import aupro

GOLDEN = np.load(Path(__file__).with_name("golden.npz"))
TRAINING = np.load(Path(__file__).with_name("golden_training.npz"))


def golden(key: str) -> torch.Tensor:
    return torch.from_numpy(GOLDEN[key])


def training(key: str) -> torch.Tensor:
    return torch.from_numpy(TRAINING[key])


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
    # anomalib inverts Sigma + 1e-5 I: relative differences of order 1e-5 / 0.01 (measured 4.7e-4)
    np.testing.assert_allclose(model.patch_scores(embedding).numpy(), GOLDEN["padim_distance"], rtol=1e-3)
    np.testing.assert_allclose(model.predict(test).maps, GOLDEN["padim_map"], rtol=1e-3)


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


# --- training: golden_training.npz ----------------------------------------------------------------------------------

def _cfa_head(features: torch.Tensor, **params):
    """CFA on the golden features (D = 6 -> D' = 12), its head in float64 with the golden phi_0 and r."""
    model = method_class("cfa")(FixedMaps({"layer": features}), ["layer"], width_factor=2, nn_backend="torch", **params)
    head = model.heads[0].double()
    with torch.no_grad():
        head.descriptor.conv.weight.copy_(training("cfa_step_weight"))
        head.descriptor.conv.bias.copy_(training("cfa_step_bias"))
        head.radius.fill_(float(TRAINING["cfa_step_radius0"]))
    return model, head


def test_cfa_optimisation_step_matches_the_official_code() -> None:
    """One AdamW step on a batch of 4 (trainer_cfa.py:122-127): loss, descriptor and radius gradients, updated r and phi.
    The official loss carries 1/nu = 1000 (adbench leaves it out), so its loss and gradients are 1000 x adbench's."""
    features, bank = training("cfa_step_features"), training("cfa_step_bank")
    model, head = _cfa_head(features, epochs=1, train_batch_size=4)
    assert TRAINING["cfa_step_active"].min() > 0  # both hinges act on this batch
    att, rep = model.cfa_losses(head, features, bank, NearestNeighbours("torch").fit(bank))
    assert 1000 * (att + rep).item() == pytest.approx(float(TRAINING["cfa_step_loss_x1000"]), rel=1e-12)
    info = model._train(head, bank, features, torch.arange(4), torch.arange(0), "resize")
    assert info["epochs_run"] == 1
    conv = head.descriptor.conv
    np.testing.assert_allclose(1000 * conv.weight.grad.numpy(), TRAINING["cfa_step_grad_weight_x1000"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(1000 * conv.bias.grad.numpy(), TRAINING["cfa_step_grad_bias_x1000"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(1000 * head.radius.grad.numpy(), TRAINING["cfa_step_grad_radius_x1000"], rtol=1e-10)
    # Adam's first step is lr * g / (|g| + eps), eps = 1e-8; adbench's g is 1000 x smaller than the official one, so
    # the steps differ by at most lr * eps / |g| per entry (the "invariant up to eps" of the 1/nu note in cfa.py)
    for got, key, grad in ((head.radius, "cfa_step_radius1", head.radius.grad), (conv.weight, "cfa_step_weight1", conv.weight.grad)):
        bound = 1e-3 * 1e-8 / grad.abs().numpy() + 1e-13
        assert np.all(np.abs(got.detach().numpy() - TRAINING[key]) <= bound), key
    assert abs(head.radius.item() - float(TRAINING["cfa_step_radius0"])) > 5e-4, "the step moved r by about lr"


def test_cfa_bank_initialisation_matches_the_official_code() -> None:
    """Default bank: the mean phi_0 map (utils/cfa.py:80-86); and K-means (utils/cfa.py:32) on separated blobs."""
    features = training("cfa_init_features")
    model, head = _cfa_head(features, bank_init="mean", gamma_c=1.0)
    np.testing.assert_allclose(model.build_bank(head, features).numpy(), TRAINING["cfa_init_bank"], rtol=1e-12, atol=1e-12)
    centres = kmeans_centres(training("cfa_kmeans_points"), 5, seed=0).numpy()
    np.testing.assert_allclose(centres[np.lexsort(centres.T[::-1])], TRAINING["cfa_kmeans_centres"], rtol=1e-12, atol=1e-12)


def test_reconpatch_similarities_loss_and_ema_match_the_paper_equations() -> None:
    k, alpha, sigma, margin, momentum = TRAINING["rc_params"].tolist()
    z_bar, z = training("rc_z_bar"), training("rc_z")
    np.testing.assert_allclose(pairwise_similarity(z_bar, sigma).numpy(), TRAINING["rc_pairwise"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(contextual_similarity(z_bar, int(k)).numpy(), TRAINING["rc_contextual"], rtol=1e-12, atol=1e-15)
    model = method_class("reconpatch")(FixedMaps({"a": torch.zeros(1, 3, 1, 1)}), ["a"], embed_dim=None, feature_dim=3, head_dim=3,
                                       k=int(k), alpha=alpha, sigma=sigma, margin=margin)
    w, _ = model.pseudo_labels(z_bar)
    np.testing.assert_allclose(w.numpy(), TRAINING["rc_w"], rtol=1e-12, atol=1e-15)
    assert relaxed_contrastive_loss(z, w, margin).item() == pytest.approx(float(TRAINING["rc_loss"]), rel=1e-12)
    net = nn.ModuleList([nn.Linear(3, 4, bias=False), nn.Linear(3, 4, bias=False)]).double()
    with torch.no_grad():
        for p, value in zip(net.parameters(), training("ema_theta_bar")):
            p.copy_(value)
    ema = ema_copy(net, momentum)  # the target network starts as a copy
    with torch.no_grad():
        for p, value in zip(net.parameters(), training("ema_theta")):
            p.copy_(value)
    ema.update_parameters(net)
    np.testing.assert_allclose(np.stack([p.detach().numpy() for p in ema.module.parameters()]), TRAINING["ema_updated"], rtol=1e-12)


def test_fcdd_hsc_losses_and_gaussian_upsampling_match_the_authors_code() -> None:
    r, j, s, side, std = TRAINING["fcdd_field"].tolist()
    a = pseudo_huber(training("fcdd_outs"))[:, 0]
    assert hsc_loss(a, training("fcdd_labels")).item() == pytest.approx(float(TRAINING["fcdd_hsc_loss"]), rel=1e-12)
    up = receptive_upsample(a, (int(side), int(side)), ReceptiveField(int(r), int(j), (s, s)), std)
    # adbench builds its Gaussian kernel in float32 (the authors: float64 scipy, cast to float32): ~1e-7 relative
    np.testing.assert_allclose(up[:, 1::4, 1::4].numpy(), TRAINING["fcdd_upsampled_1_4"], rtol=1e-6, atol=1e-7)
    assert pixel_hsc_loss(up, training("fcdd_gtmaps")).item() == pytest.approx(float(TRAINING["fcdd_gt_loss"]), rel=1e-6)
