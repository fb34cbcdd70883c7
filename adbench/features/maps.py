"""From patch scores to full-resolution anomaly maps: bilinear upsampling + Gaussian smoothing.

The blur is anomalib's (kernel 2 * int(4 sigma + 0.5) + 1, reflect padding without the edge pixel;
tests/reference checks it); patchcore-inspection's scipy filter also repeats the edge pixel, which
changes the outermost ~4 sigma pixels slightly.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=64)
def axis_operator(n_in: int, n_out: int, sigma: float, device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """(n_in, n_out): bilinear upsampling (``align_corners=False``, as ``F.interpolate``) then the Gaussian blur
    (torchvision's kernel, reflect padding) along one axis, as one matrix. Both steps are linear and separable, so a
    map is rows^T @ scores @ cols: the same operator as interpolating and blurring the image (float rounding apart),
    for 2 (h W + H W) h flops an image instead of (2 r + 1)^2 H W (bottle at 224 px: ~25x fewer). Cached per ``device``:
    no copy to a GPU per batch."""
    source = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    low = np.floor(source).astype(int)
    high, share = np.minimum(low + 1, n_in - 1), source - low
    upsample = np.zeros((n_in, n_out))
    np.add.at(upsample, (low, np.arange(n_out)), 1 - share)
    np.add.at(upsample, (high, np.arange(n_out)), share)
    if sigma <= 0:
        return torch.from_numpy(upsample).float().to(device)
    radius = int(4 * sigma + 0.5)
    if radius >= n_out:
        raise ValueError(f"a Gaussian blur of sigma {sigma} reflects {radius} px at the border: maps must be wider, got {n_out} px")
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    source = np.arange(n_out)[:, None] + offsets[None, :]  # reflect padding, the edge pixel not repeated
    source = np.abs(source)
    source = np.where(source > n_out - 1, 2 * (n_out - 1) - source, source)
    blur = np.zeros((n_out, n_out))
    np.add.at(blur, (source, np.repeat(np.arange(n_out)[:, None], offsets.size, 1)), kernel / kernel.sum())
    return torch.from_numpy(upsample @ blur).float().to(device)


def upsample_scores(patch_scores: torch.Tensor, size: tuple[int, int], sigma: float = 4.0) -> torch.Tensor:
    """(B, h, w) patch scores → (B, H, W) maps, upsampled bilinearly and blurred with a Gaussian of ``sigma`` px (0 = none)."""
    h, w = patch_scores.shape[-2:]
    rows = axis_operator(h, size[0], float(sigma), patch_scores.device)
    cols = axis_operator(w, size[1], float(sigma), patch_scores.device)
    return rows.T @ patch_scores.float() @ cols
