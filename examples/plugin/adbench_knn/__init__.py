"""kNN on patches: an adbench method plugin in one file (see ../README.md).

fit:   every patch feature of the normal training images (each chosen layer's 3x3 local mean, deeper
       layers upsampled to the finest, concatenated), at most ``max_bank`` of them kept at random;
score: s(p) = mean distance of patch p to its ``k`` nearest bank features; image score = max_p s(p);
maps:  patch scores upsampled bilinearly to the input, Gaussian ``sigma`` (adbench's helper).

It is PatchCore without the coreset and the channel pooling: a baseline, and a template for plugins.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from adbench.features.maps import upsample_scores
from adbench.methods import AnomalyDetector, Prediction


class PatchKNN(AnomalyDetector):
    """Patch-level kNN distance to a memory bank of normal patch features."""

    param_constraints = {"k": "[1, inf)", "max_bank": "[1, inf)", "sigma": "[0, inf)", "seed": "[0, inf)"}
    fitted_attributes = ("bank",)  # what adbench saves with save_model=PATH
    deviations = ("random subsample of the bank instead of PatchCore's greedy coreset",)

    def __init__(self, backbone, layers: list[str], k: int = 1, max_bank: int = 20000, sigma: float = 4.0, seed: int = 0,
                 device: str = "cpu"):
        super().__init__(backbone, layers, device)
        self.k, self.max_bank, self.sigma, self.seed = k, max_bank, sigma, seed
        self.bank: torch.Tensor | None = None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w): each layer's 3x3 local mean at the finest layer's resolution, concatenated."""
        maps = [F.avg_pool2d(m, 3, stride=1, padding=1) for m in self.layer_maps(images)]
        size = maps[0].shape[-2:]
        return torch.cat([F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps], 1)

    @torch.no_grad()
    def _fit(self, batches: Iterable[dict]) -> None:
        rows = [self.embed(x).permute(0, 2, 3, 1).flatten(0, 2) for x in self.images(batches, "features")]
        bank = torch.cat(rows)
        if len(bank) > self.max_bank:
            keep = torch.randperm(len(bank), generator=torch.Generator().manual_seed(self.seed))[: self.max_bank]
            bank = bank[keep.to(bank.device)]
        self.bank = bank.contiguous()
        self.fit_info = {"patches": sum(len(r) for r in rows), "bank": len(self.bank)}

    @torch.no_grad()
    def _predict(self, images: torch.Tensor) -> Prediction:
        features = self.embed(images)
        b, _, h, w = features.shape
        queries = features.permute(0, 2, 3, 1).flatten(0, 2)
        dist = torch.cat([torch.cdist(q, self.bank).topk(self.k, largest=False).values.mean(1) for q in queries.split(4096)])
        scores = dist.reshape(b, h, w)
        maps = upsample_scores(scores, tuple(images.shape[-2:]), self.sigma)
        return Prediction(scores.flatten(1).amax(1).cpu().numpy().astype(np.float64), maps.cpu().numpy())

    @property
    def memory_bank_shape(self) -> tuple[int, ...]:
        return tuple(self.bank.shape) if self.bank is not None else ()

    @property
    def memory_bank_bytes(self) -> int:
        return 0 if self.bank is None else self.bank.numel() * self.bank.element_size()
