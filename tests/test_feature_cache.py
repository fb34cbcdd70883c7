"""The feature cache: same maps as the network, keyed by weights and image content, shared by runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_overrides

from adbench.features.backbones import Backbone
from adbench.features.cache import CachedBackbone, cache_size, image_keys, stage_layers
from adbench.methods import method_class

LAYERS = ["layer1", "layer2"]


def tiny_backbone(seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    return Backbone("resnet18", LAYERS, pretrained=False)


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return tiny_backbone()


@pytest.fixture()
def images() -> torch.Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def cached_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.safetensors"))


def test_second_call_is_served_from_disk_with_identical_maps(backbone, images, tmp_path):
    cache = CachedBackbone(backbone, tmp_path)
    cache.register(images)
    direct = backbone(images)
    first, second = cache(images), cache(images)
    assert dict(cache.counts) == {"misses": 3, "hits": 3, "stored": 3 * len(LAYERS)}
    for layer in LAYERS:
        assert torch.equal(first[layer], direct[layer])
        assert torch.equal(second[layer], direct[layer])
    assert len(cached_files(tmp_path)) == 3 * len(LAYERS)
    (info,) = cache_size(tmp_path).values()
    assert info["maps"] == 3 * len(LAYERS) and info["model"] == "resnet18" and info["device"] == "cpu"


def test_unregistered_images_are_computed_but_never_written(backbone, images, tmp_path):
    cache = CachedBackbone(backbone, tmp_path)
    out = cache(images)
    assert torch.equal(out["layer2"], backbone(images)["layer2"])
    assert cache.counts["misses"] == 3 and cache.counts["stored"] == 0
    assert cached_files(tmp_path) == []


def test_mixed_batch_keeps_image_order(backbone, images, tmp_path):
    cache = CachedBackbone(backbone, tmp_path)
    cache.register(images[1:2])
    cache(images[1:2])
    mixed = cache(images)  # image 1 from disk, images 0 and 2 computed
    assert cache.counts["hits"] == 1 and cache.counts["misses"] == 1 + 2
    direct = backbone(images)
    for layer in LAYERS:
        torch.testing.assert_close(mixed[layer], direct[layer], rtol=1e-5, atol=1e-5)


def test_key_changes_with_weights_and_with_image_content(images, tmp_path):
    first = CachedBackbone(tiny_backbone(seed=0), tmp_path)
    first.register(images)
    first(images)
    other_weights = CachedBackbone(tiny_backbone(seed=1), tmp_path)
    other_weights.register(images)
    out = other_weights(images)
    assert other_weights.counts["hits"] == 0, "maps of other weights must not be served"
    assert torch.equal(out["layer1"], other_weights.inner(images)["layer1"])
    assert len({p.parent.name for p in tmp_path.glob("*/meta.json")}) == 2

    changed = images.clone()
    changed[0, 0, 0, 0] += 1e-3  # one value of one image: a different key
    assert image_keys(changed)[0] != image_keys(images)[0] and image_keys(changed)[1:] == image_keys(images)[1:]
    first(changed)
    assert first.counts["hits"] == 2 and first.counts["misses"] == 3 + 1


def test_unfrozen_weights_bypass_the_cache(images, tmp_path):
    cache = CachedBackbone(tiny_backbone(), tmp_path)
    cache.register(images)
    cache(images)
    cache.inner.requires_grad_(True)  # a method fine-tuning the backbone
    cache(images)
    assert cache.counts["bypassed"] == 3 and cache.counts["hits"] == 0


def test_corrupt_entry_is_recomputed_and_rewritten(backbone, images, tmp_path):
    cache = CachedBackbone(backbone, tmp_path)
    cache.register(images)
    cache(images)
    victim = cached_files(tmp_path)[0]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated by a crash or a full disk
    out = cache(images)
    assert cache.counts["misses"] == 3 + 1
    assert torch.equal(out["layer1"], backbone(images)["layer1"])
    cache(images)
    assert cache.counts["hits"] == 2 + 3, "the rewritten entry is served again"


def test_methods_see_the_backbone_attributes(backbone, tmp_path):
    cache = CachedBackbone(backbone, tmp_path)
    assert cache.layers == backbone.layers and cache.channels == backbone.channels
    assert cache.strides == backbone.strides and cache.mean == backbone.mean and cache.name == "resnet18"
    method = method_class("patchcore")(cache, LAYERS, coreset_ratio=0.5, device="cpu")
    assert method.backbone is cache


def test_layers_not_served_are_stored_for_later_runs(images, tmp_path):
    torch.manual_seed(0)
    every_stage = Backbone("resnet18", ["layer1", "layer2", "layer3"], pretrained=False)
    first = CachedBackbone(every_stage, tmp_path, ["layer2"])
    first.register(images)
    assert list(first(images)) == ["layer2"]
    later = CachedBackbone(every_stage, tmp_path, ["layer1", "layer3"])  # another method's layers
    out = later(images)
    assert later.counts["hits"] == 3 and later.counts["misses"] == 0
    assert torch.equal(out["layer3"], every_stage(images)["layer3"])
    with pytest.raises(ValueError, match="layer4"):
        CachedBackbone(every_stage, tmp_path, ["layer4"])


def test_stage_layers_adds_every_stage_from_stride_4():
    every, wanted = stage_layers("resnet18", ["2", "layer3"])
    assert wanted == ["layer2", "layer3"] and every == ["layer1", "layer2", "layer3", "layer4"]


def test_runs_share_extraction_and_match_uncached_results(tmp_path):
    data = ["dataset=synthetic", f"dataset.root={tmp_path / 'data'}", "dataset.n_train=8", "dataset.n_test=4",
            "dataset.size=64", "dataset.resize=64", "dataset.crop=64"]
    cache = f"cache_dir={tmp_path / 'cache'}"
    first = run_overrides(["method=patchcore", *data, cache], tmp_path / "cached")
    assert first["feature_cache"]["fit"]["misses"] == 8 and first["feature_cache"]["test"]["misses"] == 8
    # another method with other layers (PaDiM: strides 4, 8, 16; PatchCore: 8, 16): extraction is not paid again
    second = run_overrides(["method=padim", *data, cache], tmp_path / "cached")
    assert second["feature_cache"]["fit"] | {"stored": 0} == {"hits": 8, "misses": 0, "stored": 0, "bypassed": 0}
    assert second["feature_cache"]["test"]["hits"] == 8 and second["feature_cache"]["test"]["misses"] == 0
    plain = run_overrides(["method=padim", *data], tmp_path / "plain")
    assert plain["feature_cache"] is None
    assert plain["config_hash"] == second["config_hash"], "cache_dir must not change the config hash"
    assert plain["metrics"] == pytest.approx(second["metrics"], rel=1e-6)
    assert plain["feature_maps"] == second["feature_maps"]
