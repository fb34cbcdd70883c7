"""One transform for images and masks: resize, centre-crop, grayscale to RGB, normalise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF


@dataclass(frozen=True)
class Transform:
    """Resize to ``resize`` x ``resize`` then centre-crop ``crop`` (papers: 256 then 224).

    Masks use nearest-neighbour resizing and stay binary. ``mean``/``std`` come from the backbone.
    """

    resize: int = 256
    crop: int = 224
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.crop > self.resize:
            raise ValueError(f"dataset.crop ({self.crop}) must not exceed dataset.resize ({self.resize})")

    def image(self, image: Image.Image) -> torch.Tensor:
        image = TF.resize(image.convert("RGB"), [self.resize, self.resize], antialias=True)
        tensor = TF.to_tensor(TF.center_crop(image, [self.crop, self.crop]))
        return TF.normalize(tensor, list(self.mean), list(self.std))

    def mask(self, mask: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy((mask > 0).astype(np.float32))[None]
        tensor = TF.resize(tensor, [self.resize, self.resize], interpolation=TF.InterpolationMode.NEAREST)
        return TF.center_crop(tensor, [self.crop, self.crop])[0]

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Undo normalisation, giving values in [0, 1] for display."""
        mean = torch.tensor(self.mean, device=images.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(-1, 1, 1)
        return (images * std + mean).clamp(0, 1)

    @property
    def key(self) -> str:
        return f"resize{self.resize}-crop{self.crop}-mean{tuple(self.mean)}-std{tuple(self.std)}"
