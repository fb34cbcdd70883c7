"""The one torch Dataset: samples → normalised image tensors, masks, labels and paths."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .samples import Sample, read_image, read_mask
from .transforms import Transform


class ImageDataset(torch.utils.data.Dataset):
    """Samples → dicts with ``image`` (3,H,W), ``mask`` (H,W), ``label`` and ``path``.

    ``degrade``: optional ``(image, mask, sample) -> (image, mask)`` applied after loading, before
    the transform (test-time degradations, see :mod:`adbench.degrade`).
    """

    def __init__(self, samples: list[Sample], transform: Transform, degrade: Callable[[Image.Image, np.ndarray, Sample], tuple[Image.Image, np.ndarray]] | None = None):
        self.samples, self.transform, self.degrade = samples, transform, degrade

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = read_image(sample.image)
        if sample.mask is not None:
            mask = read_mask(sample.mask)
            if mask.shape != (image.height, image.width):
                raise DataError(f"mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]}, its image {sample.image} is {image.width}x{image.height}")
        else:
            mask = np.zeros((image.height, image.width), bool)
        if self.degrade is not None:
            image, mask = self.degrade(image, mask, sample)
        return {
            "image": self.transform.image(image),
            "mask": self.transform.mask(mask),
            "label": sample.label,
            "path": str(sample.image),
        }
