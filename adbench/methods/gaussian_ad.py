"""Gaussian AD / MahalanobisAD (Rippel et al., ICPR 2020): one Gaussian per backbone stage, image level.

embed: f_l(x) = global-average-pooled feature map of stage l
fit:   (mu_l, Sigma_l) = Ledoit-Wolf shrinkage estimate over the training images (scikit-learn)
score: s(x) = sum_l sqrt((f_l(x) - mu_l)^T Sigma_l^-1 (f_l(x) - mu_l))
No anomaly maps: the method scores whole images only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from ..errors import DataError
from . import register
from .base import AnomalyDetector, Prediction, nbytes


@register("gaussian_ad")
class GaussianAD(AnomalyDetector):
    """``mean`` and ``precision`` hold every stage's mu_l and Sigma_l^-1, flattened and concatenated."""

    pixel_level = False
    fitted_attributes = ("mean", "precision")

    def __init__(self, backbone, layers: list[str], device: str = "cpu"):
        super().__init__(backbone, layers, device)
        self.stage_channels = [backbone.channels[layer] for layer in self.layers]
        self.mean: torch.Tensor | None = None  # (sum_l C_l,) float64
        self.precision: torch.Tensor | None = None  # (sum_l C_l^2,) float64

    def embed(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per stage, (B, C_l) pooled features."""
        return [m.mean((2, 3)) for m in self.layer_maps(images)]

    def _stages(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(mu_l, Sigma_l^-1) views, one per stage."""
        m = p = 0
        for c in self.stage_channels:
            yield self.mean[m : m + c], self.precision[p : p + c * c].view(c, c)
            m, p = m + c, p + c * c

    @torch.no_grad()
    def _fit(self, batches: Iterable[dict]) -> None:
        pooled = [torch.cat(stage).double().cpu().numpy() for stage in zip(*(self.embed(x) for x in self.images(batches, "features")))]
        if not pooled or pooled[0].shape[0] < 2:
            raise DataError(f"Gaussian AD needs at least 2 training images, got {pooled[0].shape[0] if pooled else 0}")
        estimates = [LedoitWolf().fit(x) for x in pooled]
        self.mean = torch.from_numpy(np.concatenate([e.location_ for e in estimates])).to(self.device)
        self.precision = torch.from_numpy(np.concatenate([e.precision_.ravel() for e in estimates])).to(self.device)
        self.fit_info = {"images": int(pooled[0].shape[0]), "shrinkage": [float(e.shrinkage_) for e in estimates]}

    def mahalanobis(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        """(B, L) Mahalanobis distance of each image's pooled stage features to that stage's Gaussian."""
        out = []
        for x, (mu, precision) in zip(pooled, self._stages()):
            diff = x.double() - mu
            out.append(torch.einsum("bi,ij,bj->b", diff, precision, diff).clamp_(min=0).sqrt_())
        return torch.stack(out, 1)

    @torch.no_grad()
    def _predict(self, images: torch.Tensor) -> Prediction:
        scores = self.mahalanobis(self.embed(images)).sum(1)
        return Prediction(scores.cpu().numpy())

    @property
    def memory_bank_shape(self) -> tuple[int, ...]:
        """(floats kept,): every stage's mean and C_l x C_l precision."""
        return () if self.mean is None else (self.mean.numel() + self.precision.numel(),)

    @property
    def memory_bank_bytes(self) -> int:
        return nbytes(self.mean, self.precision)
