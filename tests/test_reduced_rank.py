"""PatchCore's exact reduced-rank bank (R x, ||R v|| = ||B v||) against the literal embed_dim-wide bank."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adbench.data.dataset import ImageDataset
from adbench.data.sources import load_mvtec
from adbench.data.transforms import Transform
from adbench.features.backbones import Backbone
from adbench.features.coreset import project
from adbench.features.patches import LowRank, channel_matrix, flatten_patches, patch_features, stacked_patch_maps
from adbench.methods import method_class

LAYERS = ["blocks.2", "blocks.4"]


def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """torch's adaptive average pooling as an (n_out, n_in) matrix, from its documented bins
    [floor(i n_in / n_out), ceil((i + 1) n_in / n_out)) -- an independent reference for channel_matrix."""
    out = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        out[i, lo:hi] = 1.0 / (hi - lo)
    return out


def test_channel_matrix_is_patchcore_inspections_pooling_and_its_rank() -> None:
    dim = 1024
    per_layer = np.zeros((2 * dim, 152))
    per_layer[:dim, :40], per_layer[dim:, 40:] = adaptive_pool_matrix(40, dim), adaptive_pool_matrix(112, dim)
    expected = adaptive_pool_matrix(2 * dim, dim) @ per_layer
    matrix = channel_matrix([40, 112], dim).numpy()
    np.testing.assert_allclose(matrix, expected, rtol=0, atol=1e-12)
    assert np.linalg.matrix_rank(expected) == 152
    factor = LowRank(channel_matrix([40, 112], dim))
    assert factor.rank == 152 and factor.reduces
    v = np.random.default_rng(0).standard_normal((152, 50))
    np.testing.assert_allclose(np.linalg.norm(factor.r.double().numpy() @ v, axis=0), np.linalg.norm(expected @ v, axis=0), rtol=1e-6)
    assert not LowRank(channel_matrix([512, 1024], dim)).reduces  # WRN50 layer2 + layer3: rank 1024, nothing to gain


def test_reduced_features_and_projection_equal_the_wide_ones() -> None:
    torch.manual_seed(0)
    maps = [torch.randn(2, 40, 28, 28), torch.randn(2, 112, 14, 14)]
    wide = flatten_patches(patch_features(maps, 3, 1024, "avgpool"))
    factor = LowRank(channel_matrix([40, 112], 1024))
    narrow = flatten_patches(factor.apply(stacked_patch_maps(maps, 3)))
    assert narrow.shape == (2 * 28 * 28, 152)
    torch.testing.assert_close(narrow @ factor.basis.T, wide, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.cdist(narrow[:300], narrow[300:]), torch.cdist(wide[:300], wide[300:]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(project(narrow, 128, seed=3, basis=factor.basis), project(wide, 128, seed=3), rtol=1e-4, atol=1e-4)


def bottle_batches(root, split: str, count: int, backbone: Backbone) -> list[dict]:
    items = getattr(load_mvtec(str(root / "mvtec"), "bottle"), split)
    dataset = ImageDataset(items[:: max(1, len(items) // count)][:count], Transform(128, 128, backbone.mean, backbone.std))
    return list(torch.utils.data.DataLoader(dataset, batch_size=4))


def test_reduced_bank_scores_like_the_wide_bank_on_real_features(data_root) -> None:
    backbone = Backbone("tf_efficientnet_lite0", LAYERS)
    train, test = bottle_batches(data_root, "train", 12, backbone), bottle_batches(data_root, "test", 8, backbone)
    fitted = {}
    for reduce in (False, True):
        model = method_class("patchcore")(backbone, LAYERS, coreset_ratio=0.1, nn_backend="torch", reduce_rank=reduce)
        fitted[reduce] = model.fit(train)
    wide, narrow = fitted[False], fitted[True]
    assert wide.bank.shape == (int(12 * 16 * 16 * 0.1), 1024) and narrow.bank.shape == (wide.bank.shape[0], 152)
    assert narrow.fit_info["stored_dim"] == narrow.fit_info["rank"] == 152 and narrow.fit_info["embed_dim"] == 1024
    # the same patches picked: the wide bank is the reduced one mapped back by U (B x = U R x)
    torch.testing.assert_close(narrow.bank @ narrow.low_rank.basis.T, wide.bank, rtol=0, atol=1e-4)
    for batch in test:
        a, b = wide.predict(batch["image"]), narrow.predict(batch["image"])
        np.testing.assert_allclose(b.image_scores, a.image_scores, rtol=1e-4)
        np.testing.assert_allclose(b.maps, a.maps, rtol=1e-4, atol=1e-6)


def test_a_full_width_saved_bank_is_searched_at_full_width() -> None:
    backbone = Backbone("tf_efficientnet_lite0", LAYERS, pretrained=False)
    torch.manual_seed(0)
    train = [{"image": torch.randn(2, 3, 64, 64)}]
    wide = method_class("patchcore")(backbone, LAYERS, coreset_ratio=0.5, reduce_rank=False).fit(train)
    loaded = method_class("patchcore")(backbone, LAYERS, coreset_ratio=0.5).load_fitted_state(wide.fitted_state())
    image = torch.randn(1, 3, 64, 64)
    np.testing.assert_allclose(loaded.predict(image).image_scores, wide.predict(image).image_scores, rtol=1e-6)
    assert not loaded.reduced


@pytest.mark.parametrize("dim", [None, 64])
def test_no_reduction_where_it_does_not_narrow(dim) -> None:
    backbone = Backbone("tf_efficientnet_lite0", LAYERS, pretrained=False)
    model = method_class("patchcore")(backbone, LAYERS, embed_dim=dim, coreset_ratio=0.5).fit([{"image": torch.randn(2, 3, 64, 64)}])
    assert model.bank.shape[1] == (dim or 152) and not model.reduced


def test_records_written_before_the_key_are_named_as_the_literal_bank() -> None:
    from adbench.results.naming import run_name

    method = {"name": "patchcore", "layers": ["blocks.2", "blocks.4"], "patch_size": 3, "embed_dim": 1024, "coreset_ratio": 0.1,
              "proj_dim": 128, "num_neighbors": 1, "reweight": False, "reweight_neighbors": 9, "sigma": 4.0, "nn_backend": "auto",
              "nn_max_block_bytes": 268435456, "seed": 0}
    config = {"backbone": {"patch_layers": ["blocks.2", "blocks.4"]}, "seed": 0}
    old = {"method": "patchcore", "config": {**config, "method": method}}
    new = {"method": "patchcore", "config": {**config, "method": {**method, "reduce_rank": True}}}
    assert run_name(old) == "patchcore [reduce_rank=false]"
    assert run_name(new) == "patchcore"
