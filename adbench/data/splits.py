"""Train/test splits: the ``Split`` every data source produces, an MVTec-layout folder read into one
(:func:`mvtec_layout`), its header check (:func:`check_split`), the content digest a record carries
(:func:`split_digest`), and the seeded splits the runner makes from a dataset's own train/test split.
What a messy folder does is listed in :mod:`adbench.data.samples`."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..files import FileFacts
from .samples import IMAGE_SUFFIXES, Sample, find_mask, image_size, images_in


@dataclass
class Split:
    """Train and test samples of one category, and whether pixel masks exist."""

    name: str
    category: str
    train: list[Sample]
    test: list[Sample]
    has_masks: bool = True
    group: str | None = None  # e.g. MVTec "textures" / "objects"


def check_split(split: Split) -> Split:
    """Open every image and mask header: unreadable files and masks of another size than their image fail now, not mid-run."""
    for sample in [*split.train, *split.test]:
        size = image_size(sample.image)
        if sample.mask is not None:
            mask_size = image_size(sample.mask, "mask")
            if mask_size != size:
                raise DataError(f"mask {sample.mask} is {mask_size[0]}x{mask_size[1]}, its image {sample.image} is {size[0]}x{size[1]}")
    return split


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


def _partition(samples: list, indices: set[int]) -> tuple[list, list]:
    """(samples at ``indices``, the others), both in their original order."""
    return [s for i, s in enumerate(samples) if i in indices], [s for i, s in enumerate(samples) if i not in indices]


def holdout_split(samples: list, fraction: float, seed: int) -> tuple[list, list]:
    """(fit, held out): ``fraction`` of ``samples`` (at least one) held out, drawn with ``seed``."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"threshold.holdout must be in (0, 1), got {fraction}")
    if len(samples) < 2:
        raise ConfigError(f"threshold.holdout needs at least 2 training images to hold one out, found {len(samples)}")
    n_out = min(len(samples) - 1, max(1, round(fraction * len(samples))))
    held = set(np.random.default_rng(seed).permutation(len(samples))[:n_out].tolist())
    taken, rest = _partition(samples, held)
    return rest, taken


def labelled_split(test: list, n: int, seed: int, key: str | None = None) -> tuple[list, list]:
    """(taken, remaining test): ``n`` anomalous test samples drawn with ``seed`` move to training
    (semi-supervised methods, contaminated training sets); they leave the test set, which keeps at
    least one anomaly. ``key`` names the setting in errors (default ``method.labelled_anomalies=n``)."""
    anomalous = [i for i, s in enumerate(test) if s.label == 1]
    if not 0 < n < len(anomalous):
        raise ConfigError(f"{key or f'method.labelled_anomalies={n}'}: the test set has {len(anomalous)} anomalies; "
                          "take at least 1 and leave at least 1 for testing")
    return _partition(test, set(np.random.default_rng(seed).choice(anomalous, n, replace=False).tolist()))
