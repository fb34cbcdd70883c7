"""One image of a data set: the ``Sample`` record, reading images (any mode, as 8-bit RGB) and masks,
the decode check before a fit, and the data root. The ``Split`` of samples that every source
produces, and the MVTec folder layout, are in :mod:`adbench.data.splits`.

Messy folders, and what happens (here and in :mod:`adbench.data.splits`; ``DataError`` always names the file):
- files without an image suffix (``IMAGE_SUFFIXES``) and hidden files are ignored; an image-suffixed
  file that is not an image, a zero-byte file, or an image above Pillow's decompression-bomb limit
  (``PIL.Image.MAX_IMAGE_PIXELS`` x 2) fails when the split is built (headers of every image and
  mask are opened then); every image and mask is then decoded once before the fit
  (:func:`verify_samples`, cached per file version), so a truncated file stops the run before any
  training, in one error naming every bad file;
- a mask whose size differs from its image's fails when the split is built; a defect image without
  a mask fails, unless the category has no ``ground_truth`` folder at all (then the split is
  image-level only, with a warning); a mask without an image is ignored with a warning; an all-zero
  mask of a defect image is a warning (the image counts for image metrics, adds no defect pixel);
- an empty training folder fails; a test set of good images only runs, and its AUROC-type metrics
  are recorded as not applicable (None);
- any image mode is read as 8-bit RGB: grayscale is replicated, palette images are expanded, alpha
  is dropped, 16-bit images are scaled by 255/65535 (bit depth, never per-image contrast); float
  images (mode F, e.g. float TIFF) are scaled by their range: values within [0, 1] by 255, any other
  range from its own minimum and maximum to 0-255.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..files import FileFacts

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Sample:
    """One image: ``label`` 0 = normal, 1 = anomalous; ``mask`` None = no pixel annotation."""

    image: Path
    label: int
    mask: Path | None = None
    defect: str = "good"


def read_image(path: Path) -> Image.Image:
    """Open an image fully, as 8-bit RGB, or raise a DataError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit (mode I: read as 16-bit too)
                array = np.asarray(image, dtype=np.float64) * (255.0 / 65535.0)
                image = Image.fromarray(array.round().clip(0, 255).astype(np.uint8))
            elif image.mode == "F":
                image = Image.fromarray(_float_to_8bit(np.asarray(image, dtype=np.float64), path))
            elif image.mode in ("RGBA", "LA", "P", "PA"):
                image = image.convert("RGBA").convert("RGB") if image.mode != "LA" else image.convert("L")
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def _float_to_8bit(array: np.ndarray, path: Path) -> np.ndarray:
    """A float image as 8 bits: values in [0, 1] times 255, any other range stretched from its min and max."""
    if not np.isfinite(array).all():
        raise DataError(f"cannot read image {path}: float image holds NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        array = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return (array * 255.0).round().clip(0, 255).astype(np.uint8)


def image_size(path: Path, kind: str = "image") -> tuple[int, int]:
    """(width, height) from the file header, without decoding; DataError naming the file otherwise."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read {kind} {path}: {exc}") from exc


def _problem(read, path: Path) -> str | None:
    """Decode ``path`` fully with ``read``; the DataError's text, or None when it decodes."""
    try:
        read(path)
    except DataError as exc:
        return str(exc)
    return None


def verify_samples(samples: list[Sample], what: str = "images") -> None:
    """Decode every image and mask of ``samples`` once (results cached per file version, see
    :class:`adbench.files.FileFacts`): one DataError naming every file that does not decode; a warning
    for each defect image whose mask has no defect pixel."""
    facts = FileFacts()
    bad: list[str] = []
    empty: list[Path] = []
    try:
        for sample in samples:
            for path, read in ((sample.image, read_image), (sample.mask, read_mask)):
                problem = facts.note(path, "decodes", lambda p, read=read: _problem(read, p)) if path is not None else None
                if problem:
                    bad.append(problem)
            if sample.mask is not None and sample.label and not bad and facts.note(sample.mask, "empty", lambda path: not bool(read_mask(path).any())):
                empty.append(sample.mask)
    finally:
        facts.close()
    if bad:
        raise DataError(f"{len(bad)} unreadable file(s) among the {what}, found before any fit: " + "; ".join(bad))
    for mask in empty:
        warnings.warn(f"mask {mask} of a defect image has no defect pixel: the image counts for image metrics only", stacklevel=2)


def read_mask(path: Path) -> np.ndarray:
    """Read a mask as a boolean array (non-zero = defect)."""
    try:
        with Image.open(path) as mask:
            return np.asarray(mask.convert("L")) > 0
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read mask {path}: {exc}") from exc


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def find_mask(folder: Path, stem: str) -> Path | None:
    for candidate in (f"{stem}_mask", stem):
        for suffix in (".png", ".bmp", ".jpg", ".tif"):
            path = folder / f"{candidate}{suffix}"
            if path.is_file():
                return path
    return None


def resolve_root(root: str | None, sub: str = "") -> Path:
    """The data root: ``root`` from config, else ``$ADBENCH_DATA/sub``."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("ADBENCH_DATA")
    if not env:
        raise DataError("no data root: set dataset.root=PATH or the environment variable ADBENCH_DATA")
    return Path(env).expanduser() / sub

