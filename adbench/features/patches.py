"""The shared patch-feature pipeline used by every memory-bank method.

multi-layer maps → local p×p aggregation → upsample to the finest layer → concatenate →
optional channel reduction (PatchCore's adaptive average pooling or PaDiM's random subset).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def aggregate(feature_map: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Average each position's p×p neighbourhood (PatchCore's locally aware patch feature)."""
    if patch_size <= 1:
        return feature_map
    return F.avg_pool2d(feature_map, patch_size, stride=1, padding=patch_size // 2, count_include_pad=False)


def reduce_channels(features: torch.Tensor, dim: int | None, mode: str = "avgpool", seed: int = 0) -> torch.Tensor:
    """Reduce (B, C, h, w) to ``dim`` channels; no-op when ``dim`` is None or >= C.

    ``avgpool``: adaptive average pooling along channels (PatchCore); ``random``: a fixed random
    channel subset drawn with ``seed`` (PaDiM).
    """
    channels = features.shape[1]
    if dim is None or dim >= channels:
        return features
    if mode == "random":
        index = random_channel_subset(channels, dim, seed).to(features.device)
        return features.index_select(1, index)
    if mode == "avgpool":
        b, c, h, w = features.shape
        flat = features.permute(0, 2, 3, 1).reshape(-1, 1, c)
        return F.adaptive_avg_pool1d(flat, dim).reshape(b, h, w, dim).permute(0, 3, 1, 2)
    raise ValueError(f"unknown reduction mode {mode!r}; valid: avgpool, random")


def random_channel_subset(channels: int, dim: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``dim`` of ``channels`` channels, fixed by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(channels, generator=generator)[:dim].sort().values


def patch_features(
    maps: Sequence[torch.Tensor],
    patch_size: int = 3,
    dim: int | None = None,
    mode: str = "avgpool",
    seed: int = 0,
) -> torch.Tensor:
    """Combine layer maps (finest first) into one (B, D, h, w) patch-feature map."""
    size = maps[0].shape[-2:]
    pooled = [aggregate(m, patch_size) for m in maps]
    resized = [p if p.shape[-2:] == size else F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pooled]
    return reduce_channels(torch.cat(resized, dim=1), dim, mode, seed)


def flatten_patches(features: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) → (B*h*w, D), rows in image-major, row-major position order."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
