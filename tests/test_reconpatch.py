"""ReConPatch: similarities and loss against hand computations, the EMA update, defects found on bottle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import run_overrides

from adbench.errors import ConfigError
from adbench.features.backbones import Backbone
from adbench.features.patches import flatten_patches
from adbench.methods.reconpatch import (
    ReConPatch,
    contextual_similarity,
    ema_copy,
    pairwise_similarity,
    relaxed_contrastive_loss,
)


def test_pairwise_similarity_by_hand():
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])  # squared distances 1, 4, 5
    expected = torch.tensor(
        [
            [1.0, math.exp(-1 / 2), math.exp(-4 / 2)],
            [math.exp(-1 / 2), 1.0, math.exp(-5 / 2)],
            [math.exp(-4 / 2), math.exp(-5 / 2), 1.0],
        ]
    )
    torch.testing.assert_close(pairwise_similarity(z, sigma=2.0), expected)


def test_pairwise_similarity_median_heuristic():
    z = np.random.default_rng(0).normal(size=(7, 3)) * 30  # squared distances ~ 10^3: sigma = 1 gives the identity
    sq = ((z[:, None] - z[None]) ** 2).sum(-1)
    sigma = np.median(sq[~np.eye(7, dtype=bool)])
    got = pairwise_similarity(torch.tensor(z), sigma=None).numpy()
    np.testing.assert_allclose(got, np.exp(-sq / sigma), rtol=1e-10)
    np.testing.assert_allclose(pairwise_similarity(torch.tensor(z), sigma=1.0).numpy(), np.eye(7), atol=1e-30)


def test_contextual_similarity_by_hand():
    # points 0, 1, 3, 10, 11 on a line; k = 2 (each point and its nearest other point), N_{k/2}(i) = {i}
    # N(0) = {0,1}, N(1) = {1,0}, N(2) = {2,1}, N(3) = {3,4}, N(4) = {4,3}
    # w~_01 = w~_10 = 1, w~_21 = |{2,1} ∩ {1,0}| / 2 = 1/2, w~_34 = w~_43 = 1, w~_ii = 1
    z = torch.tensor([[0.0], [1.0], [3.0], [10.0], [11.0]])
    expected = torch.tensor(
        [
            [1.0, 1.0, 0.0, 0.0, 0.0],
            [1.0, 1.0, 0.25, 0.0, 0.0],
            [0.0, 0.25, 1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0, 1.0],
            [0.0, 0.0, 0.0, 1.0, 1.0],
        ]
    )
    torch.testing.assert_close(contextual_similarity(z, k=2), expected)


def _contextual_reference(z: np.ndarray, k: int) -> np.ndarray:
    """Straight from the equations, with Python sets: overlap ratio, query expansion over N_{k/2}, symmetrised."""
    n = len(z)
    dist = ((z[:, None] - z[None]) ** 2).sum(-1)
    hood = [list(np.argsort(dist[i], kind="stable")[:k]) for i in range(n)]
    tilde = np.zeros((n, n))
    for i in range(n):
        for j in hood[i]:
            tilde[i, j] = len(set(hood[i]) & set(hood[j])) / len(hood[i])
    expanded = np.array([np.mean([tilde[l] for l in hood[i][: k // 2]], axis=0) for i in range(n)])
    return (expanded + expanded.T) / 2


@pytest.mark.parametrize("k", [3, 4, 6])
def test_contextual_similarity_matches_set_reference(k):
    z = np.random.default_rng(k).normal(size=(9, 3))
    got = contextual_similarity(torch.tensor(z, dtype=torch.float64), k).numpy()
    np.testing.assert_allclose(got, _contextual_reference(z, k), atol=1e-12)
    np.testing.assert_allclose(got, got.T)


def test_relaxed_contrastive_loss_by_hand():
    z = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.0]], dtype=torch.float64)
    m = 1.5
    # distances 3, 4, 5; row means (self included) 7/3, 8/3, 3
    delta = {(0, 1): 9 / 7, (0, 2): 12 / 7, (1, 0): 9 / 8, (1, 2): 15 / 8, (2, 0): 4 / 3, (2, 1): 5 / 3}
    total = sum(w[i, j].item() * d**2 + (1 - w[i, j].item()) * max(m - d, 0.0) ** 2 for (i, j), d in delta.items())
    loss = relaxed_contrastive_loss(z, w, m)
    assert loss.item() == pytest.approx(total / 3, rel=1e-9)
    loss.backward()
    assert torch.isfinite(z.grad).all()  # zero self-distances give no NaN gradient


def test_ema_update():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    ema = ema_copy(net, momentum=0.9)
    start = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update_parameters(net)
    for averaged, old, new in zip(ema.module.parameters(), start, net.parameters()):
        torch.testing.assert_close(averaged, 0.9 * old + 0.1 * new.detach())


@pytest.fixture(scope="module")
def tiny_backbone():
    return Backbone("resnet18", ["layer2", "layer3"], pretrained=False)


def test_bad_hyper_parameters_are_config_errors(tiny_backbone):
    with pytest.raises(ConfigError, match="alpha"):
        ReConPatch(tiny_backbone, ["layer2", "layer3"], alpha=1.5)
    with pytest.raises(ConfigError, match="ema_momentum"):
        ReConPatch(tiny_backbone, ["layer2", "layer3"], ema_momentum=1.0)


def test_training_lowers_the_loss_and_scores_shape(tiny_backbone):
    torch.manual_seed(0)
    images = torch.randn(4, 3, 64, 64)
    model = ReConPatch(tiny_backbone, ["layer2", "layer3"], feature_dim=32, head_dim=16, epochs=6, images_per_step=2,
                       patches_per_step=64, lr=1e-2, coreset_ratio=0.25)
    model.fit([{"image": images[:2]}, {"image": images[2:]}])
    assert model.fit_info["loss_last_epoch"] < model.fit_info["loss_first_epoch"]
    assert model.memory_bank_shape == (model.fit_info["patches"] // 4, 32)
    prediction = model.predict(images[:3])
    assert prediction.image_scores.shape == (3,) and prediction.maps.shape == (3, 64, 64)
    state = model.fitted_state()
    clone = ReConPatch(tiny_backbone, ["layer2", "layer3"], feature_dim=32, head_dim=16, seed=1).load_fitted_state(state)
    np.testing.assert_allclose(clone.predict(images[:3]).image_scores, prediction.image_scores, rtol=1e-6)


def test_training_cuts_the_relaxed_contrastive_loss(tiny_backbone):
    """Training must matter: on 256 fixed patches, the loss of g(f(p)) against the pseudo-labels it induces is at most a
    third of the untrained network's (the same seed gives the same f_0, g_0; measured: 27 vs 152 after 12 steps at
    lr 1e-2). It fails when the optimiser step does nothing (ratio 1: the EMA copy then equals the network too)."""
    torch.manual_seed(0)
    images = torch.randn(4, 3, 64, 64)
    args = dict(feature_dim=32, head_dim=16, epochs=6, images_per_step=2, patches_per_step=64, lr=1e-2, coreset_ratio=0.25, seed=0)
    trained = ReConPatch(tiny_backbone, ["layer2", "layer3"], **args).fit([{"image": images[:2]}, {"image": images[2:]}])
    untrained = ReConPatch(tiny_backbone, ["layer2", "layer3"], **args)
    losses = []
    with torch.no_grad():
        p = flatten_patches(untrained.patches(images))
        p = p[torch.randperm(len(p), generator=torch.Generator().manual_seed(1))[:256]]
        for model in (trained, untrained):
            z = model.projection(model.feature_layer(p))
            losses.append(relaxed_contrastive_loss(z, model.pseudo_labels(z)[0], model.margin).item())
    assert losses[0] <= losses[1] / 3


def test_sigma_consequence_is_declared(tiny_backbone):
    fixed = ReConPatch(tiny_backbone, ["layer2", "layer3"]).deviations
    assert any(d.startswith("sigma 1 on unnormalised z_bar") for d in fixed) and any("STML defaults" in d for d in fixed)
    median = ReConPatch(tiny_backbone, ["layer2", "layer3"], sigma=None).deviations
    assert any("median squared z_bar distance" in d for d in median)


def test_reconpatch_detects_bottle_defects(data_root, tmp_path):
    record = run_overrides(["method=reconpatch", "dataset=mvtec", "method.epochs=1", "method.patches_per_step=512", "batch_size=32"], tmp_path)
    assert record["metrics"]["image_auroc"] >= 0.97
    assert record["metrics"]["pixel_auroc"] >= 0.95
    assert record["fit_info"]["steps"] > 0
