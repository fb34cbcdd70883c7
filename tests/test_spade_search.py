"""SPADE's pixel search (each image against its K neighbours' galleries) against scipy's brute-force distances."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist

from adbench.features.backbones import Backbone
from adbench.methods import method_class


def test_spade_pixel_scores_match_a_per_image_scipy_search() -> None:
    torch.manual_seed(0)
    layers = ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    backbone = Backbone("tf_efficientnet_lite0", layers, pretrained=False)
    model = method_class("spade")(backbone, layers, top_k=3, sigma=0).fit([{"image": torch.randn(5, 3, 64, 64)}])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        *pyramid, last = model.layer_maps(images)
        _, neighbours = model.image_knn(last.mean((2, 3)))
        scores = model.pixel_scores(pyramid, neighbours, (64, 64))
    expected = torch.zeros(2, 64, 64)
    start = 0
    for maps, (c, h, w) in zip(pyramid, model.gallery_shapes.tolist()):
        for b in range(2):  # the straightforward per-image loop: gallery = the K neighbours' maps, every position
            gallery = model.gallery[neighbours[b], start : start + c * h * w].reshape(-1, c, h * w).transpose(1, 2).reshape(-1, c)
            nearest = cdist(maps[b].reshape(c, -1).T.double().numpy(), gallery.double().numpy()).min(1)
            patch = torch.from_numpy(nearest).float().reshape(1, 1, h, w)
            expected[b] += F.interpolate(patch, size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
        start += c * h * w
    torch.testing.assert_close(scores, expected / len(pyramid), rtol=1e-5, atol=1e-5)
