"""The shared patch-feature pipeline used by every memory-bank method.

multi-layer maps → local p×p aggregation → upsample to the finest layer → concatenate, with an
optional reduction to ``dim`` channels:

``avgpool`` (PatchCore, patchcore-inspection's ``Preprocessing`` + ``Aggregator``): each layer is
  adaptive-average-pooled along its channels to ``dim`` first, then the L·dim stacked values are
  pooled to ``dim``, so every layer gets the same share (1 : 1) whatever its channel count;
``random`` (PaDiM): a fixed random subset of the concatenated channels.

The local aggregation is a p×p mean with zero padding, divided by p² at the border too (torch's
default ``count_include_pad``), as in patchcore-inspection, anomalib and the official CFA code.

Exact low rank: the spatial steps (p×p mean, upsampling) act on each channel alike and the channel
steps (``avgpool``'s poolings) act on each position alike, so they commute and the embedding of one
position is B·x, with x the concatenation of the layers' spatially processed channels (C = sum C_l)
and B = ``channel_matrix`` (dim × C). When rank(B) < dim (Lite0: 40 + 112 channels stretched to
1024), ``LowRank`` gives R (rank × C) with ||R v|| = ||B v|| for every v, and the basis U (dim × rank,
orthonormal columns) with B = U R: distances, nearest neighbours and random projections ((B x)·P =
(R x)·(Uᵀ P)) of B·x are those of the narrower R·x.
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


def stacked_patch_maps(maps: Sequence[torch.Tensor], patch_size: int = 3, upsample: str = "bilinear") -> torch.Tensor:
    """The layers' p×p-averaged maps on the finest grid, concatenated along channels: (B, sum C_l, h, w), the x of B·x."""
    if upsample not in UPSAMPLING:
        raise ValueError(f"unknown upsampling {upsample!r}; valid: {', '.join(UPSAMPLING)}")
    size = maps[0].shape[-2:]
    resized = []
    for m in maps:
        p = aggregate(m, patch_size)
        if p.shape[-2:] != size:
            p = F.interpolate(p, size=size, mode=upsample, **({"align_corners": False} if upsample == "bilinear" else {}))
        resized.append(p)
    return torch.cat(resized, dim=1)


def channel_matrix(channels: Sequence[int], dim: int) -> torch.Tensor:
    """B (dim × sum C_l), float64: ``patch_features``' ``avgpool`` reduction of one position's concatenated
    channels, read off by running its channel poolings on the unit vectors."""
    columns = []
    for c in channels:  # unit vectors of one layer, zero in the others: (C_l, C_l, 1, 1) maps
        columns.append(pool_channels(torch.eye(c, dtype=torch.float64)[:, :, None, None], dim)[:, :, 0, 0])
    total = sum(channels)
    stacked = torch.zeros(total, len(channels) * dim, dtype=torch.float64)
    start = 0
    for layer, (c, pooled) in enumerate(zip(channels, columns)):
        stacked[start : start + c, layer * dim : (layer + 1) * dim] = pooled
        start += c
    out = stacked if len(channels) == 1 else pool_channels(stacked[:, :, None, None], dim)[:, :, 0, 0]
    return out.T.contiguous()


class LowRank:
    """B = U R from the SVD of B (B = V S Wᵀ): R = S Wᵀ (rank × C), U = V (dim × rank); singular values
    below ``tol`` × the largest are dropped (rank(B)). ``reduces``: rank < dim, i.e. R·x is narrower."""

    def __init__(self, matrix: torch.Tensor, tol: float = 1e-10):
        u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
        rank = int((s > tol * s[0]).sum()) if s.numel() else 0
        self.width, self.rank = int(matrix.shape[0]), rank
        self.r = (s[:rank, None] * vh[:rank]).float()  # (rank, C)
        self.basis = u[:, :rank].float()  # (dim, rank)

    @property
    def reduces(self) -> bool:
        return self.rank < self.width

    def apply(self, stacked: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) stacked maps → (B, rank, h, w) R·x (a view of a position-major tensor: flattening copies nothing)."""
        r = self.r.to(stacked.device)
        return (stacked.permute(0, 2, 3, 1) @ r.T).permute(0, 3, 1, 2)


def flatten_patches(features: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) → (B*h*w, D), rows in image-major, row-major position order."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
