"""Samples and splits: the one shape every data source produces, and the MVTec folder layout.

Messy folders, and what happens (``DataError`` always names the file):
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

import hashlib
import os
import warnings
from collections.abc import Callable
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


@dataclass
class Split:
    """Train and test samples of one category, and whether pixel masks exist."""

    name: str
    category: str
    train: list[Sample]
    test: list[Sample]
    has_masks: bool = True
    group: str | None = None  # e.g. MVTec "textures" / "objects"


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


def check_split(split: Split) -> Split:
    """Open every image and mask header: unreadable files and masks of another size than their image fail now, not mid-run."""
    for sample in [*split.train, *split.test]:
        size = image_size(sample.image)
        if sample.mask is not None:
            mask_size = image_size(sample.mask, "mask")
            if mask_size != size:
                raise DataError(f"mask {sample.mask} is {mask_size[0]}x{mask_size[1]}, its image {sample.image} is {size[0]}x{size[1]}")
    return split


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


def mvtec_layout(root: Path, category: str, name: str = "folder") -> Split:
    """Read ``root/category`` in MVTec layout: train/good, test/<type>, ground_truth/<type>/<stem>_mask.png."""
    base = root / category
    if not base.is_dir():
        raise DataError(f"no category folder {base} (looked under dataset.root={root})")
    train_dir = base / "train" / "good"
    if not train_dir.is_dir():
        raise DataError(f"missing training folder {train_dir}")
    train = [Sample(path, 0) for path in images_in(train_dir)]
    if not train:
        raise DataError(f"no training images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {train_dir}")
    test_dir = base / "test"
    if not test_dir.is_dir():
        raise DataError(f"missing test folder {test_dir}")
    test: list[Sample] = []
    has_masks = (base / "ground_truth").is_dir()
    for defect_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()):
        defect = defect_dir.name
        for path in images_in(defect_dir):
            if defect == "good":
                test.append(Sample(path, 0))
                continue
            mask = find_mask(base / "ground_truth" / defect, path.stem) if has_masks else None
            if mask is None and has_masks:
                raise DataError(f"defect image {path} has no mask in {base / 'ground_truth' / defect} (expected {path.stem}_mask.png)")
            test.append(Sample(path, 1, mask, defect))
    if not test:
        raise DataError(f"no test images in {test_dir}")
    if not has_masks and any(s.label for s in test):
        warnings.warn(f"{base} has no ground_truth folder: image-level evaluation only", stacklevel=2)
    _warn_orphan_masks(base / "ground_truth", {s.mask for s in test if s.mask is not None})
    return Split(name, category, train, test, has_masks=has_masks)


def _warn_orphan_masks(ground_truth: Path, used: set[Path]) -> None:
    """Warn about mask files that belong to no test image (ignored)."""
    if not ground_truth.is_dir():
        return
    orphans = sorted(p for d in ground_truth.iterdir() if d.is_dir() for p in images_in(d) if p not in used)
    if orphans:
        warnings.warn(f"{len(orphans)} mask(s) without a test image are ignored, e.g. {', '.join(map(str, orphans[:3]))}", stacklevel=3)


def find_mask(folder: Path, stem: str) -> Path | None:
    for candidate in (f"{stem}_mask", stem):
        for suffix in (".png", ".bmp", ".jpg", ".tif"):
            path = folder / f"{candidate}{suffix}"
            if path.is_file():
                return path
    return None


def data_base(split: Split) -> Path:
    """The deepest folder holding every image and mask of ``split``: records name files relative to it."""
    files = [path for s in [*split.train, *split.test] for path in (s.image, s.mask) if path is not None]
    base = Path(os.path.commonpath(files))
    return base.parent if base in files else base


def split_digest(split: Split, fingerprint: Callable[[Path], str] | None = None) -> str:
    """16 hex digits of SHA-256 over the split's files: role, label, defect, name relative to
    :func:`data_base` and the ``fingerprint`` of every image and mask, by default its BLAKE2b content
    digest (cached by path, size and mtime, :class:`adbench.files.FileFacts`). The same files in another
    folder or on another machine give the same digest; a changed pixel, or a different copy of the data,
    gives another."""
    base = data_base(split)
    digest = hashlib.sha256()
    facts = FileFacts()
    fingerprint = fingerprint or facts.digest
    try:
        for role, samples in (("train", split.train), ("test", split.test)):
            for s in samples:
                for kind, path in (("image", s.image), ("mask", s.mask)):
                    if path is not None:
                        digest.update(f"{role}|{s.label}|{s.defect}|{kind}|{path.relative_to(base).as_posix()}|{fingerprint(path)}\n".encode())
    finally:
        facts.close()
    return digest.hexdigest()[:16]


def resolve_root(root: str | None, sub: str = "") -> Path:
    """The data root: ``root`` from config, else ``$ADBENCH_DATA/sub``."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("ADBENCH_DATA")
    if not env:
        raise DataError("no data root: set dataset.root=PATH or the environment variable ADBENCH_DATA")
    return Path(env).expanduser() / sub

