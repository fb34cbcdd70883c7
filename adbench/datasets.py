"""Datasets in one shape: lists of samples (image path, label, mask path) read by one torch Dataset.

Sources: ``mvtec`` (official MVTec AD layout), ``folder`` (any root in that layout), ``elpv``
(solar cells from the ``elpv-dataset`` package, image labels only) and ``synthetic`` (generated
in code, for tests).

Messy folders, and what happens (``DataError`` always names the file):
- files without an image suffix (``IMAGE_SUFFIXES``) and hidden files are ignored; an image-suffixed
  file that is not an image, a zero-byte file, or an image above Pillow's decompression-bomb limit
  (``PIL.Image.MAX_IMAGE_PIXELS`` x 2) fails when the split is built (headers of every image and
  mask are opened then, before any fit); a truncated image fails when it is decoded;
- a mask whose size differs from its image's fails when the split is built; a defect image without
  a mask fails, unless the category has no ``ground_truth`` folder at all (then the split is
  image-level only, with a warning); a mask without an image is ignored with a warning;
- an empty training folder fails; a test set of good images only runs, and its AUROC-type metrics
  are recorded as not applicable (None);
- any image mode is read as 8-bit RGB: grayscale is replicated, palette images are expanded, alpha
  is dropped, 16-bit images are scaled by 255/65535 (bit depth, never per-image contrast);
- images of any size, mixed sizes and images smaller than the crop are resized to
  ``dataset.resize`` squared before the centre crop (small ones are upsampled).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import DataError, unknown_choice
from .transforms import Transform

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
MVTEC_TEXTURES = ["carpet", "grid", "leather", "tile", "wood"]
MVTEC_OBJECTS = ["bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper"]
MVTEC_CATEGORIES = MVTEC_TEXTURES + MVTEC_OBJECTS
MVTEC_URL = "https://www.mvtec.com/company/research/datasets/mvtec-ad"


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
            elif image.mode in ("RGBA", "LA", "P", "PA"):
                image = image.convert("RGBA").convert("RGB") if image.mode != "LA" else image.convert("L")
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


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


def read_mask(path: Path) -> np.ndarray:
    """Read a mask as a boolean array (non-zero = defect)."""
    try:
        with Image.open(path) as mask:
            return np.asarray(mask.convert("L")) > 0
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read mask {path}: {exc}") from exc


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def mvtec_layout(root: Path, category: str, name: str = "folder") -> Split:
    """Read ``root/category`` in MVTec layout: train/good, test/<type>, ground_truth/<type>/<stem>_mask.png."""
    base = root / category
    if not base.is_dir():
        raise DataError(f"no category folder {base} (looked under dataset.root={root})")
    train_dir = base / "train" / "good"
    if not train_dir.is_dir():
        raise DataError(f"missing training folder {train_dir}")
    train = [Sample(path, 0) for path in _images_in(train_dir)]
    if not train:
        raise DataError(f"no training images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {train_dir}")
    test_dir = base / "test"
    if not test_dir.is_dir():
        raise DataError(f"missing test folder {test_dir}")
    test: list[Sample] = []
    has_masks = (base / "ground_truth").is_dir()
    for defect_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()):
        defect = defect_dir.name
        for path in _images_in(defect_dir):
            if defect == "good":
                test.append(Sample(path, 0))
                continue
            mask = _find_mask(base / "ground_truth" / defect, path.stem) if has_masks else None
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
    orphans = sorted(p for d in ground_truth.iterdir() if d.is_dir() for p in _images_in(d) if p not in used)
    if orphans:
        warnings.warn(f"{len(orphans)} mask(s) without a test image are ignored, e.g. {', '.join(map(str, orphans[:3]))}", stacklevel=3)


def _find_mask(folder: Path, stem: str) -> Path | None:
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


def load_mvtec(root: str | None, category: str, download: bool = False) -> Split:
    """MVTec AD (official layout, 15 categories). ``root`` defaults to ``$ADBENCH_DATA/mvtec``."""
    if category not in MVTEC_CATEGORIES:
        raise unknown_choice("dataset.category", category, MVTEC_CATEGORIES)
    path = resolve_root(root, "mvtec")
    if not (path / category).is_dir():
        if download:
            _download_mvtec(path, category)
        else:
            raise DataError(
                f"MVTec AD category {category!r} not found at {path / category}. Download it from {MVTEC_URL} "
                f"(licence CC BY-NC-SA 4.0) and point dataset.root=PATH or ADBENCH_DATA at the folder holding "
                "mvtec/<category>, or pass dataset.download=true on a machine with internet."
            )
    split = mvtec_layout(path, category, "mvtec")
    split.group = "textures" if category in MVTEC_TEXTURES else "objects"
    return split


MVTEC_ARCHIVE = (
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/420938113-1629952094/"
    "mvtec_anomaly_detection.tar.xz"
)


def _download_mvtec(path: Path, category: str) -> None:
    """Fetch and unpack the official MVTec AD archive (4.9 GB, all categories) into ``path``."""
    import tarfile
    import urllib.request

    url = MVTEC_ARCHIVE
    path.mkdir(parents=True, exist_ok=True)
    archive = path / "mvtec_anomaly_detection.tar.xz"
    try:
        urllib.request.urlretrieve(url, archive)  # noqa: S310 - the official MVTec mirror
    except OSError as exc:
        raise DataError(f"could not download MVTec AD {category} from {url}: {exc}; download it by hand from {MVTEC_URL}") from exc
    with tarfile.open(archive) as tar:
        tar.extractall(path, filter="data")
    archive.unlink()


def load_folder(root: str | None, category: str) -> Split:
    """Any root in MVTec layout; categories are its sub-folders."""
    path = resolve_root(root)
    if not path.is_dir():
        raise DataError(f"dataset.root {path} does not exist")
    categories = sorted(d.name for d in path.iterdir() if (d / "train").is_dir())
    if category not in categories:
        raise DataError(f"no category {category!r} under {path}; found: {', '.join(categories) or 'none'}")
    return mvtec_layout(path, category, "folder")


def load_elpv(category: str = "all", anomaly_threshold: float = 0.67, test_every: int = 4) -> Split:
    """ELPV solar cells (Deitsch et al.): normal = defect probability 0, anomalous >= ``anomaly_threshold``.

    Split: the normal cells of the category (``mono``, ``poly`` or ``all``), in file order; every
    ``test_every``-th goes to test, the rest to train; all anomalous cells go to test. Cells with a
    probability strictly between 0 and the threshold are left out. Image labels only.
    """
    try:
        import elpv_dataset
    except ImportError as exc:
        raise DataError("dataset=elpv needs the package elpv-dataset (pip install elpv-dataset)") from exc
    if category not in ("mono", "poly", "all"):
        raise unknown_choice("dataset.category", category, ["mono", "poly", "all"])
    labels = Path(elpv_dataset.__file__).parent / "data" / "labels.csv"
    normal, anomalous = [], []
    for line in labels.read_text().splitlines():
        rel, prob, kind = line.split()
        if category != "all" and kind != category:
            continue
        path = labels.parent / rel
        if float(prob) == 0.0:
            normal.append(Sample(path, 0))
        elif float(prob) >= anomaly_threshold:
            anomalous.append(Sample(path, 1, None, "defective"))
    test_normal = normal[::test_every]
    train = [s for i, s in enumerate(normal) if i % test_every]
    return Split("elpv", category, train, test_normal + anomalous, has_masks=False)


def make_synthetic(root: Path, category: str = "stripes", n_train: int = 16, n_test: int = 8, size: int = 128, seed: int = 0) -> Split:
    """Write a deterministic textured set in MVTec layout under ``root`` and load it.

    Normal images: oriented sinusoidal stripes with noise; anomalies: a painted disc or scratch of
    another intensity, with its mask.
    """
    rng = np.random.default_rng(seed)
    base = root / category
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    def texture() -> np.ndarray:
        phase = rng.uniform(0, 2 * np.pi)
        img = 0.5 + 0.25 * np.sin(2 * np.pi * xx / 12.0 + phase) + rng.normal(0, 0.03, (size, size))
        return np.repeat(img[..., None], 3, axis=2)

    def save(img: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(path)

    for i in range(n_train):
        save(texture(), base / "train" / "good" / f"{i:03d}.png")
    for i in range(n_test):
        save(texture(), base / "test" / "good" / f"{i:03d}.png")
        img, mask = texture(), np.zeros((size, size), bool)
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        if i % 2:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (size / 10) ** 2
        else:
            mask = (np.abs(yy - cy) < 2) & (np.abs(xx - cx) < size / 4)
        img[mask] = rng.uniform(0.0, 0.15)
        save(img, base / "test" / "defect" / f"{i:03d}.png")
        save(mask[..., None].repeat(3, 2).astype(np.float32), base / "ground_truth" / "defect" / f"{i:03d}_mask.png")
    split = mvtec_layout(root, category, "synthetic")
    return split


def load_split(name: str, root: str | None = None, category: str = "bottle", **options) -> Split:
    """Build a split from its source ``name`` (mvtec, folder, elpv, synthetic, btad, visa, mpdd)."""
    from .benchmark_sets import load_btad, load_mpdd, load_visa  # deferred: benchmark_sets builds on this module

    loaders: dict[str, Callable[..., Split]] = {
        "mvtec": lambda: load_mvtec(root, category, download=bool(options.get("download", False))),
        "folder": lambda: load_folder(root, category),
        "elpv": lambda: load_elpv(category, **{k: options[k] for k in ("anomaly_threshold", "test_every") if k in options}),
        "synthetic": lambda: make_synthetic(resolve_root(root), category, **{k: options[k] for k in ("n_train", "n_test", "size", "seed") if k in options}),
        "btad": lambda: load_btad(root, category),
        "visa": lambda: load_visa(root, category, **{k: options[k] for k in ("split_file",) if k in options}),
        "mpdd": lambda: load_mpdd(root, category),
    }
    if name not in loaders:
        raise unknown_choice("dataset.name", name, list(loaders))
    return check_split(loaders[name]())


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
