"""SPADE (Cohen & Hoshen 2020): kNN over images, then kNN over the pixels of the nearest images.

image: f_y = global-average-pooled last-stage feature of image y;
       d(y) = 1/K sum_{f in N_K(f_y)} ||f - f_y||              (K nearest training images)
pixel: G_y = feature maps (pyramid layers 1..3) of those K images, every position of every layer;
       d(y, p) = 1/kappa sum_{f in N_kappa(F(y, p))} ||f - F(y, p)||, per layer against that
       layer's gallery; each layer's map upsampled bilinearly to the image, layers averaged
maps:  Gaussian sigma = 4.

The paper writes squared distances; the reference implementation (SPADE-pytorch, which the paper's
numbers are usually reproduced with) averages plain Euclidean distances, over the K images and over
the layers, and so does adbench (listed in ``deviations``).

The memory bank is every training image's pooled vector plus its full pyramid feature maps
(|X| x H x W x D per layer): SPADE keeps all of it, nothing is subsampled.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..features.maps import upsample_scores
from ..features.nn_search import NearestNeighbours
from ..features.store import FeatureStore
from . import register
from .base import AnomalyDetector, Prediction, nbytes


@register("spade")
class SPADE(AnomalyDetector):
    """``layers``: the pixel (pyramid) layers, finest first, then the image layer last."""
    param_constraints = {"top_k": "[1, inf)", "kappa": "[1, inf)", "sigma": "[0, inf)", "nn_backend": ["auto", "faiss", "torch"]}

    fitted_attributes = ("image_bank", "gallery", "gallery_shapes")
    deviations: ClassVar[tuple[str, ...]] = ("plain distances (paper: squared; as SPADE-pytorch)",)

    def __init__(
        self,
        backbone,
        layers: list[str],
        top_k: int = 50,
        kappa: int = 1,
        sigma: float = 4.0,
        nn_backend: str = "auto",
        device: str = "cpu",
    ):
        if len(layers) < 2:
            raise ConfigError(f"method.layers={list(layers)}: SPADE needs the pixel layers followed by the image layer")
        if top_k < 1 or kappa < 1:
            raise ConfigError(f"method.top_k={top_k}, method.kappa={kappa}: both must be >= 1")
        super().__init__(backbone, layers, device)
        self.top_k, self.kappa, self.sigma, self.nn_backend = top_k, kappa, sigma, nn_backend
        self.image_nn = NearestNeighbours(nn_backend, self.device)
        self.image_bank: torch.Tensor | None = None  # (N, C_last) pooled vectors
        self.gallery: torch.Tensor | None = None  # (N, sum_l C_l h_l w_l) flattened pyramid maps
        self.gallery_shapes: torch.Tensor | None = None  # (L, 3): C_l, h_l, w_l

    @torch.no_grad()
    def _fit(self, batches: Iterable[dict]) -> None:
        vectors, shapes = [], None
        rows = FeatureStore(self.memory_budget)  # the gallery, held once (in RAM or a temporary file past the budget)
        for images in self.images(batches, "features"):
            *pyramid, last = self.layer_maps(images)
            batch_shapes = [tuple(m.shape[1:]) for m in pyramid]
            if shapes is not None and batch_shapes != shapes:
                raise DataError(
                    f"SPADE stores the training feature maps in one gallery, so training images must share one "
                    f"size; got feature maps {batch_shapes} after {shapes}. Set dataset.resize / dataset.crop."
                )
            shapes = batch_shapes
            vectors.append(last.mean((2, 3)))
            rows.append(torch.cat([m.flatten(1) for m in pyramid], 1))
        if not vectors:
            raise DataError("SPADE.fit got no training images")
        self.image_bank = torch.cat(vectors)
        self.gallery = rows.tensor().to(self.device)
        self.gallery_shapes = torch.tensor(shapes)
        self.image_nn.fit(self.image_bank)
        self.fit_info = {"images": int(self.image_bank.shape[0]), "gallery_floats_per_image": int(self.gallery.shape[1])}

    def _after_load(self) -> None:
        self.image_nn.fit(self.image_bank)

    def image_knn(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores d(y) (B,) and the indices (B, K) of the K nearest training images."""
        dist, index = self.image_nn.search(vectors, self.top_k)
        return dist.mean(1), index

    def pixel_scores(self, pyramid: list[torch.Tensor], neighbours: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, *size) pixel kNN distances, each image against its neighbours' maps, upsampled to ``size``, averaged over layers.

        One exact search per image and layer against that image's gallery (its K neighbours' maps, K h w rows). The
        cost is the arithmetic, not the loop: 2 K (h w)^2 C flops per layer, 287 GFLOP per image at WRN50's 224 px
        shapes with K = 50; on an H200 this loop ran at 53% of the float32 matmul rate, and a batched search over
        groups of images ran 2.4x slower (benchmarks/bench_spade_search.py)."""
        scores = torch.zeros(pyramid[0].shape[0], *size, device=pyramid[0].device)
        for b, nearest in enumerate(neighbours.to(self.gallery.device)):
            start = 0
            for maps, (c, h, w) in zip(pyramid, self.gallery_shapes.tolist()):
                gallery = self.gallery[nearest, start : start + c * h * w].reshape(len(nearest), c, h * w).transpose(1, 2).reshape(-1, c)
                dist, _ = NearestNeighbours(self.nn_backend, self.device).fit(gallery).search(maps[b].reshape(c, -1).T, self.kappa)
                patch = dist.mean(1).reshape(1, 1, h, w).to(scores.device)
                scores[b] += F.interpolate(patch, size=size, mode="bilinear", align_corners=False)[0, 0]
                start += c * h * w
        return scores / len(pyramid)

    @torch.no_grad()
    def _predict(self, images: torch.Tensor) -> Prediction:
        *pyramid, last = self.layer_maps(images)
        image, neighbours = self.image_knn(last.mean((2, 3)))
        if not self.compute_maps:  # the per-image gallery search is most of SPADE's cost
            return Prediction(image.cpu().numpy().astype(np.float64))
        size = tuple(images.shape[-2:])
        maps = upsample_scores(self.pixel_scores(pyramid, neighbours, size), size, self.sigma)
        return Prediction(image.cpu().numpy().astype(np.float64), maps.cpu().numpy())

    @property
    def memory_bank_shape(self) -> tuple[int, ...]:
        """(training images, floats kept per image: pooled vector + every pyramid map)."""
        if self.image_bank is None:
            return ()
        return (int(self.image_bank.shape[0]), int(self.image_bank.shape[1] + self.gallery.shape[1]))

    @property
    def memory_bank_bytes(self) -> int:
        if self.image_bank is None:
            return 0
        return nbytes(self.image_bank, self.gallery, self.gallery_shapes)
