"""Test-time image degradations (``dataset.degrade``) for robustness evaluation.

The test images of a run are degraded after loading, the training images never: Gaussian noise,
Gaussian blur, a brightness/contrast change, JPEG compression, or a small random rotation plus
translation (the mask is moved with the image). Each kind has five severities (1 = mild, 3 =
moderate, 5 = strong). Images are first resized to the evaluation size (``dataset.resize``, exactly
as the clean path does), so a severity means the same on every dataset whatever its native
resolution. Random draws depend only on the run's seed, the image's path tail and the step, so
every run, method and machine sees the same degraded test set.

Spec (config or command line): ``null`` / ``none`` (clean), ``"kind:severity"`` (e.g.
``gaussian_noise:3``), ``{kind: jpeg, severity: 3}``, or a list of these applied in order.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image
from scipy import ndimage
from torchvision.transforms import functional as TF

from ..errors import ConfigError
from .samples import Sample

# Parameters per severity 1..5.
SEVERITIES: dict[str, tuple] = {
    # noise standard deviation, as a fraction of the 0..255 range
    "gaussian_noise": (0.02, 0.04, 0.06, 0.08, 0.10),
    # Gaussian blur standard deviation in pixels at the evaluation size
    "blur": (0.5, 1.0, 1.5, 2.0, 3.0),
    # (brightness shift as a fraction of the range, relative contrast change); directions drawn per image
    "brightness_contrast": ((0.05, 0.1), (0.1, 0.2), (0.15, 0.3), (0.2, 0.4), (0.25, 0.5)),
    # JPEG quality
    "jpeg": (75, 50, 30, 20, 10),
    # (largest rotation in degrees, largest shift as a fraction of the side); drawn uniformly per image
    "affine": ((2.0, 0.01), (4.0, 0.02), (6.0, 0.03), (8.0, 0.04), (10.0, 0.05)),
}
KINDS = list(SEVERITIES)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add i.i.d. N(0, (255 sigma)^2) noise to every pixel and channel."""
    return _to_uint8(image.astype(np.float64) + rng.normal(0.0, 255.0 * sigma, image.shape))


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of standard deviation ``sigma`` pixels (each channel, reflected borders)."""
    return _to_uint8(ndimage.gaussian_filter(image.astype(np.float64), sigma=(sigma, sigma, 0), mode="reflect"))


def brightness_contrast(image: np.ndarray, brightness: float, contrast: float, rng: np.random.Generator) -> np.ndarray:
    """``(x - mean) * (1 ± contrast) + mean ± brightness`` on [0, 1] values, directions drawn from ``rng``."""
    c = 1.0 + contrast * rng.choice([-1.0, 1.0])
    b = brightness * rng.choice([-1.0, 1.0])
    x = image.astype(np.float64) / 255.0
    mean = x.mean()
    return _to_uint8(255.0 * ((x - mean) * c + mean + b))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode as JPEG at ``quality`` and decode again."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB")).copy()


def affine(image: np.ndarray, mask: np.ndarray, max_degrees: float, max_shift: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rotate about the centre by U(-max_degrees, max_degrees) and shift by U(-max_shift, max_shift) x side.

    Image (bilinear) and mask (nearest) go through the same map; borders are reflected, so no
    artificial black wedges appear and the mask still covers exactly the defect's pixels.
    """
    h, w = mask.shape
    angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    shift = rng.uniform(-max_shift, max_shift, 2) * np.array([h, w])
    cos, sin = np.cos(angle), np.sin(angle)
    inverse = np.array([[cos, sin], [-sin, cos]])  # rotation by -angle in (row, col) coordinates
    centre = (np.array([h, w]) - 1) / 2.0
    offset = centre - inverse @ (centre + shift)  # output o samples input inverse @ (o - centre - shift) + centre
    channels = [
        ndimage.affine_transform(image[..., i].astype(np.float64), inverse, offset, order=1, mode="reflect")
        for i in range(image.shape[2])
    ]
    moved = ndimage.affine_transform(mask.astype(np.uint8), inverse, offset, order=0, mode="reflect")
    return _to_uint8(np.stack(channels, axis=2)), moved > 0


@dataclass(frozen=True)
class Degradation:
    """One degradation ``kind`` at ``severity`` 1..5 (parameters in ``SEVERITIES``)."""

    kind: str
    severity: int

    def __post_init__(self) -> None:
        if self.kind not in SEVERITIES:
            raise ConfigError(f"unknown dataset.degrade kind {self.kind!r}; valid: {', '.join(KINDS)}")
        if isinstance(self.severity, bool) or not isinstance(self.severity, int) or not 1 <= self.severity <= len(SEVERITIES[self.kind]):
            raise ConfigError(f"dataset.degrade severity for {self.kind} must be an integer 1..{len(SEVERITIES[self.kind])}, got {self.severity!r}")

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.severity}"

    @property
    def params(self) -> Any:
        return SEVERITIES[self.kind][self.severity - 1]

    def apply(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Degrade ``image`` (H, W, 3 uint8); ``mask`` (H, W bool) changes only with the geometry."""
        p = self.params
        if self.kind == "gaussian_noise":
            return gaussian_noise(image, p, rng), mask
        if self.kind == "blur":
            return blur(image, p), mask
        if self.kind == "brightness_contrast":
            return brightness_contrast(image, p[0], p[1], rng), mask
        if self.kind == "jpeg":
            return jpeg(image, p), mask
        return affine(image, mask, p[0], p[1], rng)


def parse_degrade(spec: Any) -> list[Degradation]:
    """``None`` / ``"none"`` → []; ``"kind:severity"``, ``{kind, severity}`` or a list of them → steps."""
    if isinstance(spec, (DictConfig, ListConfig)):
        spec = OmegaConf.to_container(spec, resolve=True)
    if spec is None:
        return []
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() in ("", "none", "clean"):
            return []
        kind, sep, severity = text.partition(":")
        if not sep or not severity.strip().isdigit():
            raise ConfigError(f"dataset.degrade={spec!r}: expected 'kind:severity' (e.g. gaussian_noise:3) with kind in {', '.join(KINDS)}")
        return [Degradation(kind.strip(), int(severity))]
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {"kind", "severity"})
        if unknown or "kind" not in spec or "severity" not in spec:
            raise ConfigError(f"dataset.degrade={spec!r}: expected the keys kind and severity")
        return [Degradation(str(spec["kind"]), spec["severity"])]
    if isinstance(spec, Sequence):
        return [step for item in spec for step in parse_degrade(item)]
    raise ConfigError(f"dataset.degrade={spec!r}: expected none, 'kind:severity', a mapping or a list")


class Degrader:
    """The hook :class:`adbench.datasets.ImageDataset` calls on every loaded test image.

    ``(image, mask, sample) -> (image, mask)``: resize to ``size`` x ``size`` (as the clean
    transform does), then apply ``steps`` in order with a generator seeded by
    (``seed``, the last three parts of the image path, the step).
    """

    def __init__(self, steps: Sequence[Degradation], seed: int, size: int):
        if not steps:
            raise ConfigError("Degrader needs at least one degradation step")
        self.steps, self.seed, self.size = list(steps), int(seed), int(size)

    @property
    def label(self) -> str:
        return "+".join(step.label for step in self.steps)

    def rng(self, sample: Sample, step: int) -> np.random.Generator:
        key = "/".join(sample.image.parts[-3:])
        return np.random.default_rng([self.seed, zlib.crc32(key.encode()), step])

    def __call__(self, image: Image.Image, mask: np.ndarray, sample: Sample) -> tuple[Image.Image, np.ndarray]:
        image = TF.resize(image, [self.size, self.size], antialias=True)
        mask_t = TF.resize(torch.from_numpy(mask.astype(np.float32))[None], [self.size, self.size], interpolation=TF.InterpolationMode.NEAREST)
        pixels, mask = np.asarray(image.convert("RGB")), mask_t[0].numpy() > 0
        for index, step in enumerate(self.steps):
            pixels, mask = step.apply(pixels, mask, self.rng(sample, index))
        return Image.fromarray(pixels), mask


def degrader_from_config(spec: Any, seed: int, size: int) -> Degrader | None:
    """A Degrader for ``dataset.degrade`` (None when the test set stays clean)."""
    steps = parse_degrade(spec)
    return Degrader(steps, seed, size) if steps else None


def variant_name(tag: str | None, degrader: Degrader | None) -> str | None:
    """The record's variant: the run's tag and the degradation label, joined by '; '."""
    parts = [part for part in (tag, degrader.label if degrader else None) if part]
    return "; ".join(parts) or None
