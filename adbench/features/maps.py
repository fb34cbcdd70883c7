"""From patch scores to full-resolution anomaly maps: bilinear upsampling + Gaussian smoothing.

The blur is anomalib's (kernel 2 * int(4 sigma + 0.5) + 1, reflect padding without the edge pixel;
tests/reference checks it); patchcore-inspection's scipy filter also repeats the edge pixel, which
changes the outermost ~4 sigma pixels slightly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur


def upsample_scores(patch_scores: torch.Tensor, size: tuple[int, int], sigma: float = 4.0) -> torch.Tensor:
    """(B, h, w) patch scores → (B, H, W) maps, blurred with a Gaussian of ``sigma`` px (0 = none)."""
    maps = F.interpolate(patch_scores[:, None].float(), size=size, mode="bilinear", align_corners=False)
    if sigma > 0:
        radius = int(4 * sigma + 0.5)
        maps = gaussian_blur(maps, kernel_size=2 * radius + 1, sigma=sigma)
    return maps[:, 0]
