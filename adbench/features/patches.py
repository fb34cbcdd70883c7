"""The shared patch-feature pipeline used by every memory-bank method.

multi-layer maps → local p×p aggregation → upsample to the finest layer → concatenate, with an
optional reduction to ``dim`` channels:

``avgpool`` (PatchCore, patchcore-inspection's ``Preprocessing`` + ``Aggregator``): each layer is
  adaptive-average-pooled along its channels to ``dim`` first, then the L·dim stacked values are
  pooled to ``dim``, so every layer gets the same share (1 : 1) whatever its channel count;
``random`` (PaDiM): a fixed random subset of the concatenated channels.

The local aggregation is a p×p mean with zero padding, divided by p² at the border too (torch's
default ``count_include_pad``), as in patchcore-inspection, anomalib and the official CFA code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

UPSAMPLING = ("bilinear", "nearest")


def aggregate(feature_map: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Average each position's p×p neighbourhood, zero-padded (PatchCore's locally aware patch feature)."""
    if patch_size <= 1:
        return feature_map
    return F.avg_pool2d(feature_map, patch_size, stride=1, padding=patch_size // 2)


def pool_channels(features: torch.Tensor, dim: int) -> torch.Tensor:
    """Adaptive average pooling of (B, C, h, w) along C to ``dim`` channels (also when ``dim`` > C)."""
    b, c, h, w = features.shape
    flat = features.permute(0, 2, 3, 1).reshape(-1, 1, c)
    return F.adaptive_avg_pool1d(flat, dim).reshape(b, h, w, dim).permute(0, 3, 1, 2)


def reduce_channels(features: torch.Tensor, dim: int | None, mode: str = "avgpool", seed: int = 0) -> torch.Tensor:
    """Reduce (B, C, h, w) to ``dim`` channels; no-op when ``dim`` is None or >= C.

    ``avgpool``: adaptive average pooling along channels; ``random``: a fixed random channel subset
    drawn with ``seed`` (PaDiM).
    """
    channels = features.shape[1]
    if dim is None or dim >= channels:
        return features
    if mode == "random":
        index = random_channel_subset(channels, dim, seed).to(features.device)
        return features.index_select(1, index)
    if mode == "avgpool":
        return pool_channels(features, dim)
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
    upsample: str = "bilinear",
) -> torch.Tensor:
    """Combine layer maps (finest first) into one (B, D, h, w) patch-feature map.

    ``dim`` with ``avgpool``: every layer pooled to ``dim`` channels, then the stack to ``dim``
    (D = ``dim``); with ``random``: a subset of the concatenation; None: the concatenation.
    ``upsample``: how deeper layers reach the finest grid (PaDiM's references replicate: nearest).
    """
    if upsample not in UPSAMPLING:
        raise ValueError(f"unknown upsampling {upsample!r}; valid: {', '.join(UPSAMPLING)}")
    size = maps[0].shape[-2:]
    per_layer = dim is not None and mode == "avgpool"
    resized = []
    for m in maps:
        p = aggregate(m, patch_size)
        pool_first = per_layer and dim <= p.shape[1]  # both are linear, on different axes: they commute
        if pool_first:
            p = pool_channels(p, dim)
        if p.shape[-2:] != size:
            p = F.interpolate(p, size=size, mode=upsample, **({"align_corners": False} if upsample == "bilinear" else {}))
        if per_layer and not pool_first:
            p = pool_channels(p, dim)
        resized.append(p)
    features = torch.cat(resized, dim=1)
    if per_layer:
        return features if len(maps) == 1 else pool_channels(features, dim)
    return reduce_channels(features, dim, mode, seed)


def flatten_patches(features: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) → (B*h*w, D), rows in image-major, row-major position order."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
