"""The backbone's inference network (BatchNorm folded into the convolutions, channels-last) against timm's own."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from adbench.features.backbones import Backbone, fold_batch_norms, load_pretrained_state, same_function


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def count(module: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def test_lite0_maps_equal_timms_unfolded_network():
    layers = ["blocks.2", "blocks.4"]
    backbone = Backbone("tf_efficientnet_lite0", layers)
    names = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True).feature_info.module_name()
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=[names.index(x) for x in layers])
    state, _ = load_pretrained_state("tf_efficientnet_lite0", None)
    reference.load_state_dict({key: state[key] for key in reference.state_dict()})
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.eval()(images)
    maps = backbone(images)
    for layer, want in zip(layers, expected):
        assert maps[layer].is_contiguous()
        assert relative_error(maps[layer], want) < 1e-5
    fast = backbone.inference_model()
    assert count(fast, nn.BatchNorm2d) == 0 and count(backbone.model, nn.BatchNorm2d) > 0  # folded, the original kept
    assert count(fast, nn.Conv2d) == count(backbone.model, nn.Conv2d)
    assert set(backbone.state_dict()) == {f"model.{key}" for key in reference.state_dict()}  # digests and model files unchanged


def randomise_batch_norms(module: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for norm in module.modules():
        if isinstance(norm, nn.BatchNorm2d):
            shape = norm.running_mean.shape
            norm.running_mean.copy_(torch.randn(shape, generator=generator))
            norm.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
            norm.weight.data.copy_(torch.randn(shape, generator=generator))
            norm.bias.data.copy_(torch.randn(shape, generator=generator))


def test_resnet_fold_follows_loaded_weights():
    backbone = Backbone("resnet18", ["layer2", "layer3"], pretrained=False)
    randomise_batch_norms(backbone.model, 0)
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = backbone.model(images)
    first = backbone(images)
    assert all(relative_error(first[layer], want) < 1e-5 for layer, want in zip(backbone.layers, before))
    state = copy.deepcopy(backbone.state_dict())
    for key in state:
        if key.endswith("running_mean"):
            state[key] += 1.0
    backbone.load_state_dict(state)  # the inference copy must be rebuilt from these weights
    with torch.no_grad():
        after = backbone.model(images)
    second = backbone(images)
    for layer, want, old in zip(backbone.layers, after, first.values()):
        assert relative_error(second[layer], want) < 1e-5
        assert relative_error(second[layer], old) > 1e-3


class Misregistered(nn.Module):
    """A BatchNorm registered right after a convolution but applied to the input, not to the convolution's output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, x):
        return [self.conv(self.norm(x))]


class Ordered(Misregistered):
    def forward(self, x):
        return [self.norm(self.conv(x))]


@pytest.mark.parametrize("network, same", [(Ordered, True), (Misregistered, False)])
def test_the_probe_catches_a_fold_that_changes_the_function(network, same):
    model = network().eval()
    randomise_batch_norms(model, 3)
    folded = fold_batch_norms(copy.deepcopy(model))
    assert count(folded, nn.BatchNorm2d) == 0
    assert same_function(model, folded) is same
