"""Data sources → splits: ``mvtec`` (official MVTec AD layout), ``folder`` (any root in that
layout), ``elpv`` (solar cells from the ``elpv-dataset`` package, image labels only), ``synthetic``
(generated in code, for tests and smoke runs) and the benchmark sets BTAD, VisA and MPDD.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError, unknown_choice
from ..files import cache_root
from .benchmark_sets import (
    BTAD_PRODUCTS,
    MPDD_CATEGORIES,
    VISA_CATEGORIES,
    load_btad,
    load_mpdd,
    load_visa,
)
from .samples import Sample, resolve_root
from .splits import Split, check_split, mvtec_layout

MVTEC_TEXTURES = ["carpet", "grid", "leather", "tile", "wood"]
MVTEC_OBJECTS = ["bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper"]
MVTEC_CATEGORIES = MVTEC_TEXTURES + MVTEC_OBJECTS
MVTEC_URL = "https://www.mvtec.com/company/research/datasets/mvtec-ad"


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
        urllib.request.urlretrieve(url, archive)
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
    """Write a deterministic textured set in MVTec layout under ``root/category`` and load it.

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
    return mvtec_layout(root, category, "synthetic")


def load_synthetic(cache: Path, category: str = "stripes", n_train: int = 16, n_test: int = 8, size: int = 128, seed: int = 0) -> Split:
    """The generated set for these parameters, made once under ``cache/<parameters>/`` (atomically: a
    half-written set is never read) and reused by later runs."""
    folder = cache / f"{category}-{n_train}-{n_test}-{size}-{seed}"
    if not (folder / category).is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache, prefix=f".{folder.name}."))
        try:
            make_synthetic(staging, category, n_train, n_test, size, seed)
            staging.rename(folder)
        except OSError:
            if not (folder / category).is_dir():  # another process finished first: use its copy
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return mvtec_layout(folder, category, "synthetic")


def categories(name: str) -> list[str] | None:
    """The fixed category list of a source (``dataset.name``), None where categories are folders of the user's root."""
    return {"mvtec": MVTEC_CATEGORIES, "elpv": ["mono", "poly", "all"], "btad": BTAD_PRODUCTS, "visa": VISA_CATEGORIES,
            "mpdd": MPDD_CATEGORIES}.get(name)


# the keys of every ``dataset`` config node, whatever its source (none is an option of a source's loader)
COMMON_DATASET_KEYS = frozenset({"name", "label", "root", "category", "resize", "crop", "degrade"})
# the keys each source takes beyond COMMON_DATASET_KEYS: (type, range)
SOURCES: dict[str, dict[str, tuple]] = {
    "mvtec": {"download": (bool, None)},
    "folder": {},
    "elpv": {"anomaly_threshold": ((int, float), "(0, 1]"), "test_every": (int, "[2, inf)")},
    "synthetic": {"n_train": (int, "[1, inf)"), "n_test": (int, "[2, inf)"), "size": (int, "[16, inf)"), "seed": (int, "[0, inf)")},
    "btad": {},
    "visa": {"split_file": (str, None)},
    "mpdd": {},
}


def synthetic_cache(root: str | None) -> Path:
    """Where generated sets live: ``root`` if given, else ``$ADBENCH_CACHE/synthetic`` (default
    ``~/.cache/adbench/synthetic``); never under the data root."""
    if root:
        return Path(root).expanduser()
    return cache_root() / "synthetic"


def load_split(name: str, root: str | None = None, category: str = "bottle", **options) -> Split:
    """Build a split from its source ``name`` (one of ``SOURCES``)."""
    loaders: dict[str, Callable[..., Split]] = {
        "mvtec": lambda: load_mvtec(root, category, download=bool(options.get("download", False))),
        "folder": lambda: load_folder(root, category),
        "elpv": lambda: load_elpv(category, **{k: options[k] for k in ("anomaly_threshold", "test_every") if k in options}),
        "synthetic": lambda: load_synthetic(synthetic_cache(root), category, **{k: options[k] for k in ("n_train", "n_test", "size", "seed") if k in options}),
        "btad": lambda: load_btad(root, category),
        "visa": lambda: load_visa(root, category, **{k: options[k] for k in ("split_file",) if k in options}),
        "mpdd": lambda: load_mpdd(root, category),
    }
    if name not in loaders:
        raise unknown_choice("dataset.name", name, list(loaders))
    return check_split(loaders[name]())
