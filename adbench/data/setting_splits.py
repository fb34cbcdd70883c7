"""Benchmark settings beyond full-shot one-class, as seeded splits of the datasets' own train/test splits.

- ``few_shot``: K normal training images drawn with seed ``draw``; the test set is unchanged. The draw
  is a seeded permutation cut after K, so for one draw K=1 ⊂ K=4 ⊂ K=16: a learning curve shows what
  more images add, not which images were drawn (several draws give the spread).
- ``contaminated`` (IM-IAD's noisy setting): floor(ratio x n_train) anomalous test images are *added* to
  the normal training images, unlabelled (label 0, no mask: every method takes them for normal). Added,
  not replacing normal images, as IM-IAD's code does (open-iad ``extract_noisy_data`` appends them to
  the training list, with the same floor count); so ratio p means p anomalies per normal training image,
  p / (1 + p) of the training set. Which test images go, by ``protocol``:
    ``fixed_test`` (default): one pool of floor(pool x n_train) anomalies is drawn with seed ``draw`` and
        removed from the test set for every ratio <= pool, p = 0 included; ratio p trains on the first
        floor(p x n_train) of the pool (in drawn order, so a draw's smaller p is part of its larger p).
        Every point of a curve is scored on the same test images: the curve shows the contamination alone.
    ``im_iad``: IM-IAD's protocol: floor(p x n_train) anomalies drawn per p leave the test set, so each
        p is scored on a different, smaller test set (bottle: 83, 73, 63 images for p = 0, 0.05, 0.1).
  The test set keeps at least one anomaly (IM-IAD caps the count at 75 % of them silently; here a
  ratio or pool that would take too many is an error naming the key).
- ``multi_class``: the union of several categories' splits, one model; each ``Part`` says which
  test images are a category's, so it is scored on its own.

Every function takes and returns plain ``Split`` values and never touches files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..errors import ConfigError
from .samples import Sample
from .splits import Split, _partition, labelled_split

# setting.* keys of each setting (conf/setting/<name>.yaml), besides ``name``: (type, interval or None)
SETTINGS: dict[str, dict[str, tuple]] = {
    "full": {},
    "few_shot": {"shots": (int, "[1, inf)"), "draw": (int, "[0, inf)")},
    "contaminated": {"ratio": ((int, float), "[0, 1)"), "draw": (int, "[0, inf)"), "protocol": (str, ["fixed_test", "im_iad"]),
                     "pool": ((int, float), "(0, 1)")},
    "multi_class": {"categories": ((list, type(None)), None)},
}


def few_shot(split: Split, shots: int, draw: int) -> Split:
    """``split`` with ``shots`` training images drawn with seed ``draw`` (kept in file order)."""
    if not 1 <= shots <= len(split.train):
        raise ConfigError(f"setting.shots={shots}: {split.name}/{split.category} has {len(split.train)} training images")
    kept, _ = _partition(split.train, set(np.random.default_rng(draw).permutation(len(split.train))[:shots].tolist()))
    return replace(split, train=kept)


def contamination_count(n_train: int, ratio: float) -> int:
    """How many anomalies ``ratio`` adds to ``n_train`` normal training images: floor(ratio x n_train)."""
    return math.floor(ratio * n_train + 1e-9)  # 1e-9: 0.1 x 210 is 20.999... in floating point


def contaminate(split: Split, ratio: float, draw: int, protocol: str = "fixed_test", pool: float = 0.1) -> tuple[Split, list[Sample]]:
    """(split with anomalies added to training and removed from test, the anomalies that train, as they were in test)."""
    n = contamination_count(len(split.train), ratio)
    if n == 0 and ratio > 0:
        raise ConfigError(f"setting.ratio={ratio}: floor({ratio} x {len(split.train)} training images) adds no anomaly; "
                          f"use a ratio of at least {1 / len(split.train):.3g} or setting.ratio=0")
    if protocol == "im_iad":
        if n == 0:
            return split, []
        moved, test = labelled_split(split.test, n, draw, key=f"setting.ratio={ratio} ({n} anomalies)")
    elif protocol == "fixed_test":
        if ratio > pool:
            raise ConfigError(f"setting.ratio={ratio} exceeds setting.pool={pool}: the anomalies are drawn from the pool; "
                              f"raise setting.pool to at least the largest ratio of the curve")
        size = contamination_count(len(split.train), pool)
        anomalous = [i for i, s in enumerate(split.test) if s.label == 1]
        if not 0 < size < len(anomalous):
            raise ConfigError(f"setting.pool={pool} ({size} anomalies): the test set has {len(anomalous)} anomalies; "
                              "the pool must hold at least 1 and leave at least 1 for testing")
        drawn = np.random.default_rng(draw).permutation(anomalous)[:size].tolist()  # the pool, in drawn order
        taken, held = set(drawn[:n]), set(drawn)
        moved = [s for i, s in enumerate(split.test) if i in taken]
        test = [s for i, s in enumerate(split.test) if i not in held]
    else:
        raise ConfigError(f"setting.protocol={protocol!r}: expected fixed_test or im_iad")
    unlabelled = [replace(s, label=0, mask=None) for s in moved]
    return replace(split, train=split.train + unlabelled, test=test), moved


@dataclass(frozen=True)
class Part:
    """One category of a run: its name, its training-image count and its test images."""

    dataset: str  # the dataset label records carry (``dataset.label``)
    category: str
    group: str | None
    has_masks: bool
    n_train: int
    test: frozenset[str]  # image paths, as a scoring pass lists them

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.category}"

    def indices(self, paths: list[str]) -> np.ndarray:
        """Positions of this part's images among ``paths`` (a scoring pass; images taken out of the test set are absent)."""
        return np.array([i for i, path in enumerate(paths) if path in self.test], dtype=int)


def _part(dataset: str, split: Split) -> Part:
    return Part(dataset, split.category, split.group, split.has_masks, len(split.train), frozenset(str(s.image) for s in split.test))


def single(split: Split, dataset: str) -> tuple[Split, list[Part]]:
    """A one-class run: one part holding the whole test set."""
    return split, [_part(dataset, split)]


def union(splits: list[tuple[str, Split]]) -> tuple[Split, list[Part]]:
    """One split of several (dataset label, split) categories: training images pooled, test images in order, with their parts."""
    names = [f"{label}/{split.category}" for label, split in splits]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"setting.categories: {', '.join(repeated)} given twice")
    if len(splits) < 2:
        raise ConfigError(f"setting=multi_class needs at least 2 categories, got {', '.join(names) or 'none'}")
    parts, train, test = [], [], []
    for label, split in splits:
        parts.append(_part(label, split))
        train += split.train
        test += split.test
    merged = Split("multi_class", "+".join(split.category for _, split in splits), train, test,
                   has_masks=any(split.has_masks for _, split in splits))
    return merged, parts
