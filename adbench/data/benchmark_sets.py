"""Benchmarks beyond MVTec AD, read in their official layouts: BTAD, VisA and MPDD.

Every loader returns a :class:`adbench.datasets.Split`; the root comes from ``dataset.root`` or
``$ADBENCH_DATA/<btad|visa|mpdd>``. Nothing is downloaded: a missing folder raises a DataError saying
where the loader looked and where the data can be obtained.

- BTAD (Mishra et al., 2021): products ``01``-``03``; ``train/ok``, ``test/ok``, ``test/ko``,
  ``ground_truth/ko``. Image and mask formats differ per product (``.bmp`` / ``.png``), so a mask
  is found by the image's stem whatever its extension.
- VisA (Zou et al., ECCV 2022): 12 categories, split by the official ``split_csv/1cls.csv``
  (columns object, split, label, image, mask; paths relative to the root); masks non-zero = defect.
  Groups as in the VisA paper: complex structure, multiple instances, single instance.
- MPDD (Jezek et al., 2021): 6 categories in MVTec AD layout.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import DataError, unknown_choice
from .samples import Sample, find_mask, images_in, resolve_root
from .splits import Split, mvtec_layout

BTAD_PRODUCTS = ["01", "02", "03"]
BTAD_URL = "http://avires.dimi.uniud.it/papers/btad/btad.zip"

VISA_GROUPS = {
    "complex structure": ["pcb1", "pcb2", "pcb3", "pcb4"],
    "multiple instances": ["candle", "capsules", "macaroni1", "macaroni2"],
    "single instance": ["cashew", "chewinggum", "fryum", "pipe_fryum"],
}
VISA_CATEGORIES = sorted(c for cats in VISA_GROUPS.values() for c in cats)
VISA_SPLIT_FILE = "split_csv/1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_URL = "https://github.com/amazon-science/spot-diff"

MPDD_CATEGORIES = ["bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"]
MPDD_URL = "https://github.com/stepanje/MPDD"


def _missing(what: str, path: Path, url: str, licence: str) -> DataError:
    return DataError(
        f"{what} not found at {path}. Download it from {url} (licence {licence}) and point dataset.root=PATH "
        "(or ADBENCH_DATA, which is searched as $ADBENCH_DATA/<btad|visa|mpdd>) at the folder holding it; "
        "adbench does not download it."
    )


def _btad_product(category: str | int) -> str:
    """``1``, ``"1"`` and ``"01"`` all name product ``01`` (Hydra may hand over an int)."""
    name = str(category)
    return name.zfill(2) if name.isdigit() else name


def load_btad(root: str | None, category: str | int = "01") -> Split:
    """BTAD product ``category``: train on ``train/ok``; test ``test/ok`` (normal) and ``test/ko`` with masks."""
    product = _btad_product(category)
    if product not in BTAD_PRODUCTS:
        raise unknown_choice("dataset.category", category, BTAD_PRODUCTS)
    base = resolve_root(root, "btad") / product
    if not base.is_dir():
        raise _missing(f"BTAD product {product!r}", base, BTAD_URL, "CC BY-SA 4.0")
    folders = {name: base / name for name in ("train/ok", "test/ok", "test/ko")}
    for folder in folders.values():
        if not folder.is_dir():
            raise DataError(f"BTAD product {product}: missing folder {folder}")
    train = [Sample(path, 0) for path in images_in(folders["train/ok"])]
    if not train:
        raise DataError(f"no training images in {folders['train/ok']}")
    test = [Sample(path, 0) for path in images_in(folders["test/ok"])]
    masks = base / "ground_truth" / "ko"
    for path in images_in(folders["test/ko"]):
        mask = find_mask(masks, path.stem) if masks.is_dir() else None
        if mask is None:
            raise DataError(f"BTAD defect image {path} has no mask {path.stem}.png / .bmp in {masks}")
        test.append(Sample(path, 1, mask, "ko"))
    if {s.label for s in test} != {0, 1}:
        raise DataError(f"BTAD product {product}: the test set needs normal (test/ok) and defective (test/ko) images")
    return Split("btad", product, train, test, has_masks=True)


def load_visa(root: str | None, category: str = "candle", split_file: str = VISA_SPLIT_FILE) -> Split:
    """VisA ``category`` as listed in the official split CSV (``split_file``, relative to the root)."""
    if category not in VISA_CATEGORIES:
        raise unknown_choice("dataset.category", category, VISA_CATEGORIES)
    base = resolve_root(root, "visa")
    csv_path = base / split_file
    if not base.is_dir():
        raise _missing("VisA", base, VISA_URL, "CC BY 4.0")
    if not csv_path.is_file():
        raise DataError(
            f"VisA split file {csv_path} not found (dataset.split_file={split_file!r}); the official "
            f"split_csv/1cls.csv comes with the VisA archive, see {VISA_URL}"
        )
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing_columns = [c for c in VISA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing_columns:
            raise DataError(f"{csv_path}: missing column(s) {', '.join(missing_columns)}; expected {', '.join(VISA_COLUMNS)}")
        rows = [(line, row) for line, row in enumerate(reader, start=2) if row["object"].strip() == category]
    if not rows:
        raise DataError(f"{csv_path} lists no images of category {category!r}")
    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    for line, row in rows:
        where = f"{csv_path} line {line}"
        split, label = row["split"].strip(), row["label"].strip()
        if split not in splits:
            raise DataError(f"{where}: split {split!r} is neither 'train' nor 'test'")
        if label not in ("normal", "anomaly"):
            raise DataError(f"{where}: label {label!r} is neither 'normal' nor 'anomaly'")
        image = base / row["image"].strip()
        if not image.is_file():
            raise DataError(f"{where}: image {image} does not exist")
        if label == "normal":
            splits[split].append(Sample(image, 0))
            continue
        if split == "train":
            raise DataError(f"{where}: an anomalous training image; the 1cls split trains on normal images only")
        mask_name = (row["mask"] or "").strip()
        if not mask_name:
            raise DataError(f"{where}: anomalous image {image} has no mask")
        mask = base / mask_name
        if not mask.is_file():
            raise DataError(f"{where}: mask {mask} does not exist")
        splits[split].append(Sample(image, 1, mask, "anomaly"))
    for split, samples in splits.items():
        if not samples:
            raise DataError(f"{csv_path}: no {split} images of category {category!r}")
    group = next(name for name, cats in VISA_GROUPS.items() if category in cats)
    return Split("visa", category, splits["train"], splits["test"], has_masks=True, group=group)


def load_mpdd(root: str | None, category: str = "bracket_black") -> Split:
    """MPDD ``category`` (official MVTec AD layout; masks ``<stem>_mask.png``)."""
    if category not in MPDD_CATEGORIES:
        raise unknown_choice("dataset.category", category, MPDD_CATEGORIES)
    base = resolve_root(root, "mpdd")
    if not (base / category).is_dir():
        raise _missing(f"MPDD category {category!r}", base / category, MPDD_URL, "CC BY-NC-SA 4.0")
    return mvtec_layout(base, category, "mpdd")
