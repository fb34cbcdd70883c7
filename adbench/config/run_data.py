"""Config → the data a run fits and scores under its ``setting`` (conf/setting/*.yaml): which datasets
are read and which seeded split of :mod:`adbench.data.setting_splits` is applied (the scores are split per
category later, by :mod:`adbench.metrics.parts`).

A multi-class run names its categories one of two ways:
- ``dataset.category=all`` (every category of the run's dataset) or a list, ``dataset.category=[bottle,cable]``;
- ``setting.categories=[mvtec/bottle,kolektorsdd,mpdd_metal_plate]``: entries ``PRESET[/CATEGORY|/all]``,
  PRESET a ``conf/dataset`` option (its own category when none is given), so categories of several
  datasets can be pooled. The run's ``dataset.resize`` / ``dataset.crop`` apply to every part (one model,
  one input size); each part keeps its preset's root, label and options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..data import setting_splits
from ..data.samples import Sample, resolve_root
from ..data.sources import COMMON_DATASET_KEYS, categories, load_split
from ..data.splits import Split
from ..errors import ConfigError, reraise_as
from . import load_group


def load_dataset(d: DictConfig) -> Split:
    """The split of one ``dataset`` config node."""
    options = {k: v for k, v in OmegaConf.to_container(d, resolve=True).items() if k not in COMMON_DATASET_KEYS}
    return load_split(d.name, d.get("root"), d.category, **options)


def setting_of(cfg: DictConfig) -> dict[str, Any]:
    """The run's ``setting`` node as a dict (``full`` when the config has none)."""
    node = cfg.get("setting")
    return OmegaConf.to_container(node, resolve=True) if node is not None else {"name": "full"}


@dataclass
class RunData:
    """What a run fits and scores: ``split`` after the setting, ``source`` before it (the files read),
    one ``Part`` per scored category, and the anomalies a contaminated setting moved into training."""

    setting: dict[str, Any]
    source: Split
    split: Split
    parts: list[setting_splits.Part]
    contaminants: list[Sample] = field(default_factory=list)

    @property
    def label(self) -> str | None:
        """How the setting reads in a row name; None for full."""
        s = self.setting
        if s["name"] == "few_shot":
            return f"few-shot K={s['shots']} draw {s['draw']}"
        if s["name"] == "contaminated":
            protocol = " (IM-IAD protocol)" if s.get("protocol", "im_iad") == "im_iad" else ""
            return f"contaminated p={s['ratio']:g} draw {s['draw']}{protocol}"
        if s["name"] == "multi_class":
            return f"multi-class x{len(self.parts)}"
        return None

    def describe(self) -> dict[str, Any]:
        """The record's ``setting``: its config keys, plus what the split made of them."""
        out = {**self.setting, "label": self.label}
        if self.setting["name"] == "contaminated":
            out["added_anomalies"] = len(self.contaminants)
            out["anomaly_fraction"] = len(self.contaminants) / len(self.split.train)
            out["test_anomalies_removed"] = len(self.source.test) - len(self.split.test)  # fixed_test: the whole pool, every p
        if self.setting["name"] == "multi_class":
            out["parts"] = [{"dataset": p.dataset, "category": p.category, "n_train": p.n_train, "n_test": len(p.test)} for p in self.parts]
        return out


def _expand(d: DictConfig, key: str) -> list[str]:
    """The categories ``d.category`` stands for: itself, a list, or ``all`` of the source."""
    chosen = d.category
    if isinstance(chosen, ListConfig):
        return [str(c) for c in chosen]
    fixed = categories(str(d.name))
    if str(chosen) != "all" or (fixed is not None and "all" in fixed):  # ELPV's "all" is one category
        return [str(chosen)]
    if fixed is not None:
        return list(fixed)
    if d.name != "folder":
        raise ConfigError(f"{key}=all: dataset {d.name} has no category list; name the categories")
    root = resolve_root(d.get("root"))
    found = sorted(p.name for p in root.iterdir() if (p / "train").is_dir()) if root.is_dir() else []
    if not found:
        raise ConfigError(f"{key}=all: no category folders (with train/) under {root}")
    return found


def _preset(cfg: DictConfig, entry: str, key: str) -> DictConfig:
    """``conf/dataset/PRESET.yaml`` for ``PRESET[/CATEGORY]``, interpolations resolved against the run, with the run's size."""
    preset, _, category = entry.partition("/")
    root = OmegaConf.create({"seed": cfg.seed, "dataset": load_group("dataset", preset, key)})
    with reraise_as(ConfigError, f"{key}={entry}: cannot resolve conf/dataset/{preset}.yaml"):
        OmegaConf.resolve(root)
    d = root.dataset
    d.resize, d.crop = cfg.dataset.resize, cfg.dataset.crop
    if category:
        d.category = category
    return d


def part_datasets(cfg: DictConfig) -> list[DictConfig]:
    """One dataset config per category of a multi-class run."""
    entries = cfg.setting.get("categories")
    if entries:
        nodes = [_preset(cfg, str(entry), f"setting.categories[{i}]") for i, entry in enumerate(entries)]
        keys = [f"setting.categories[{i}]" for i in range(len(nodes))]
    else:
        nodes, keys = [cfg.dataset], ["dataset.category"]
    out = []
    for node, key in zip(nodes, keys):
        for category in _expand(node, key):
            part = node.copy()
            part.category = category
            out.append(part)
    return out


def data_source(cfg: DictConfig) -> Split:
    """The files a run reads, before its setting draws from them (what its data digest covers)."""
    if setting_of(cfg)["name"] == "multi_class":
        return setting_splits.union([(str(d.get("label", d.name)), load_dataset(d)) for d in part_datasets(cfg)])[0]
    return load_dataset(cfg.dataset)


def read_run_data(cfg: DictConfig) -> RunData:
    """Read the run's data and apply its setting."""
    setting = setting_of(cfg)
    name = setting["name"]
    if name == "multi_class":
        source, parts = setting_splits.union([(str(d.get("label", d.name)), load_dataset(d)) for d in part_datasets(cfg)])
        return RunData(setting, source, source, parts)
    source = load_dataset(cfg.dataset)
    label = str(cfg.dataset.get("label", cfg.dataset.name))
    contaminants: list[Sample] = []
    if name == "few_shot":
        split = setting_splits.few_shot(source, setting["shots"], setting["draw"])
    elif name == "contaminated":
        split, contaminants = setting_splits.contaminate(source, setting["ratio"], setting["draw"], setting["protocol"], setting["pool"])
    else:
        split = source
    split, parts = setting_splits.single(split, label)
    return RunData(setting, source, split, parts, contaminants)
