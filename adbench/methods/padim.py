"""PaDiM (Defard et al., ICPR 2020): one multivariate Gaussian per feature-map position.

embed: x_ij = concat of the pyramid layers at position (i, j) (deeper layers replicated onto the finest
       grid: nearest upsampling, as the official code's unfold/fold and anomalib), restricted to a fixed
       random subset of d channels.
fit:   mu_ij = mean_k x^k_ij,  Sigma_ij = cov_k(x^k_ij) + eps I   (unbiased, eps = 0.01)
       one training image (few-shot K = 1): the unbiased covariance is undefined (the official code's
       np.cov gives NaN); the scatter is zero, so Sigma_ij = eps I and M is ||x_ij - mu_ij|| / sqrt(eps)
       Sigma_ij = L_ij L_ij^T (Cholesky), kept as the inverse factor W_ij = L_ij^-1
score: M(x_ij) = sqrt((x_ij - mu_ij)^T Sigma_ij^-1 (x_ij - mu_ij)) = ||W_ij (x_ij - mu_ij)||
maps:  M upsampled bilinearly, Gaussian sigma = 4;  image score = max of the map.

Why W = L^-1 and not a triangular solve per test batch: on CPU, torch's batched triangular solve
over thousands of small matrices pays a multi-threaded BLAS call per matrix (measured on 2 busy
cores, d = 100: 59 s for one 16-image batch vs 0.8 s single-threaded). Each factor is instead
inverted once at fit with LAPACK trtri, one matrix at a time with BLAS held to one thread (d = 100:
0.4 ms, d = 550: 30 ms per position), so scoring is one batched matrix product per block of
positions. Sigma itself is never inverted.

Memory: the factors are the model, H*W*d^2 floats (WRN50, d = 550, 56x56: 3.8 GB). The covariance is
accumulated in place in that buffer in one pass over the data (shifted sums, so no feature is kept per
training image), then factored and inverted in place block by block: peak memory is that buffer plus
a few blocks of at most ``block_bytes``, independent of the number of training images.

A Gaussian per position ties the model to one feature grid, so every training and test image must
have the size of the first training image (the method's stated limitation).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from ..errors import ConfigError, DataError
from ..features.maps import upsample_scores
from ..features.patches import patch_features, random_channel_subset
from . import register
from .base import AnomalyDetector, Prediction, nbytes


def inverse_lower(factors: torch.Tensor) -> torch.Tensor:
    """(n, d, d) inverses of lower-triangular matrices: LAPACK trtri per matrix on CPU, a solve on GPU."""
    if factors.device.type != "cpu":
        eye = torch.eye(factors.shape[-1], device=factors.device, dtype=factors.dtype)
        return torch.linalg.solve_triangular(factors, eye.expand_as(factors), upper=False)
    out = torch.empty_like(factors)
    trtri = lapack.strtri if factors.dtype == torch.float32 else lapack.dtrtri
    with threadpool_limits(1, user_api="blas"):  # scipy's BLAS only; small matrices gain nothing from threads
        for i, matrix in enumerate(factors.numpy()):
            inverse, info = trtri(matrix, lower=1)
            if info != 0:
                raise np.linalg.LinAlgError(f"PaDiM: covariance factor {i} is singular (LAPACK info {info})")
            out[i] = torch.from_numpy(inverse)
    return out


@register("padim")
class PaDiM(AnomalyDetector):
    param_constraints = {"dim": "[1, inf)", "eps": "(0, inf)", "sigma": "[0, inf)", "block_bytes": "[1, inf)", "seed": "[0, inf)"}
    fitted_attributes = ("channel_index", "grid", "mean", "inverse_factor")

    def __init__(
        self,
        backbone,
        layers: list[str],
        dim: int = 100,
        eps: float = 0.01,
        sigma: float = 4.0,
        block_bytes: int = 64 * 2**20,
        seed: int = 0,
        device: str = "cpu",
    ):
        super().__init__(backbone, layers, device)
        channels = sum(backbone.channels[layer] for layer in self.layers)
        if not 0 < dim <= channels:
            raise ConfigError(f"method.dim={dim}: must be in 1..{channels} (channels of layers {self.layers})")
        self.dim, self.eps, self.sigma, self.block_bytes, self.seed = dim, eps, sigma, block_bytes, seed
        self.channel_index = random_channel_subset(channels, dim, seed)
        self.grid: torch.Tensor | None = None  # (H, W, h, w): training image size and feature grid
        self.mean: torch.Tensor | None = None  # (h*w, d)
        self.inverse_factor: torch.Tensor | None = None  # (h*w, d, d): L^-1, lower triangular

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) embedding vectors: pyramid concatenation, random channel subset."""
        features = patch_features(self.layer_maps(images), patch_size=1, upsample="nearest")
        return features.index_select(1, self.channel_index.to(features.device))

    def _blocks(self, positions: int) -> Iterator[slice]:
        """Slices of positions whose d x d matrices fit in ``block_bytes``."""
        step = max(1, self.block_bytes // (4 * self.dim * self.dim))
        for start in range(0, positions, step):
            yield slice(start, min(start + step, positions))

    def _check_size(self, images: torch.Tensor, during: str) -> None:
        if self.grid is not None and tuple(images.shape[-2:]) != tuple(self.grid[:2].tolist()):
            h, w = self.grid[:2].tolist()
            raise DataError(
                f"PaDiM models one Gaussian per feature position, so all images must share one size: "
                f"{during} got {tuple(images.shape[-2:])}, training images are ({h}, {w}). "
                "Resize/crop every image to one size (dataset.resize, dataset.crop)."
            )

    @torch.no_grad()
    def _fit(self, batches: Iterable[dict]) -> None:
        self.grid = None
        count, shift, total, scatter = 0, None, None, None
        for images in self.images(batches, "features"):
            self._check_size(images, "fit")
            features = self.embed(images)
            x = features.flatten(2).permute(2, 0, 1).contiguous()  # (hw, B, d); bmm on strided views is ~50x slower
            if shift is None:  # shifted sums (shift = first batch mean) keep float32 accumulation accurate
                self.grid = torch.tensor([*images.shape[-2:], *features.shape[-2:]])
                shift = x.mean(1, keepdim=True)
                total = torch.zeros_like(shift)
                scatter = torch.zeros(x.shape[0], self.dim, self.dim, device=x.device)
            x = x - shift
            total += x.sum(1, keepdim=True)
            for block in self._blocks(x.shape[0]):
                scatter[block].baddbmm_(x[block].transpose(1, 2), x[block])
            count += x.shape[1]
        if count == 0:
            raise DataError("PaDiM: no training images")
        offset = total / count  # (hw, 1, d): mean - shift
        for block in self._blocks(scatter.shape[0]):
            cov = scatter[block]  # Sigma = (sum x x^T - n m m^T) / (n - 1) + eps I, in place
            cov.baddbmm_(offset[block].transpose(1, 2), offset[block], alpha=-count).div_(max(count - 1, 1))
            cov.diagonal(dim1=1, dim2=2).add_(self.eps)
            scatter[block] = inverse_lower(torch.linalg.cholesky(cov))
        self.mean = (shift + offset).squeeze(1)
        self.inverse_factor = scatter
        self.fit_info = {"images": count, "positions": int(scatter.shape[0]), "dim": self.dim}

    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """(B, h, w) Mahalanobis distance of each embedding vector to its position's Gaussian."""
        b, _, h, w = features.shape
        diff = features.flatten(2).permute(2, 1, 0).contiguous() - self.mean[..., None]  # (hw, d, B), contiguous for bmm
        scores = torch.empty(h * w, b, device=features.device)
        for block in self._blocks(h * w):
            scores[block] = torch.linalg.vector_norm(torch.bmm(self.inverse_factor[block], diff[block]), dim=1)
        return scores.T.reshape(b, h, w)

    @torch.no_grad()
    def _predict(self, images: torch.Tensor) -> Prediction:
        self._check_size(images, "predict")
        scores = self.patch_scores(self.embed(images))
        maps = upsample_scores(scores, tuple(images.shape[-2:]), self.sigma)
        image = maps.flatten(1).amax(1)
        return Prediction(image.cpu().numpy().astype(np.float64), maps.cpu().numpy())

    @property
    def memory_bank_shape(self) -> tuple[int, ...]:
        if self.inverse_factor is None:
            return ()
        h, w = self.grid[2:].tolist()
        return (h, w, self.dim, self.dim)

    @property
    def memory_bank_bytes(self) -> int:
        return 0 if self.inverse_factor is None else nbytes(self.mean, self.inverse_factor, self.channel_index)
