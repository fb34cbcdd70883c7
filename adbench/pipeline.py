"""The pipeline step of a run: config → data, backbone, method, transform → fit → scores of the test images.

``build_pipeline(cfg)`` builds the objects, ``Pipeline.fit()`` and ``Pipeline.score()`` run them, and
``fit_and_score(cfg)`` does all three. The runner (which goes on to the metrics and the record) and the
benchmarks build through here, so a benchmark measures what a run does.

    pipeline, scored = fit_and_score(cfg)   # cfg: a composed conf/config.yaml
    scored.scores, scored.maps, pipeline.method.memory_bank_bytes, pipeline.fit_seconds
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import DictConfig

from .config.build import build_backbone, build_method, resolve_device
from .config.run_data import RunData, read_run_data
from .data.dataset import ImageDataset
from .data.degrade import Degrader, degrader_from_config
from .data.samples import Sample, verify_samples
from .data.splits import Split, holdout_split, labelled_split
from .data.transforms import Transform
from .errors import ConfigError
from .features.backbones import Backbone
from .features.cache import CachedBackbone, stage_layers
from .methods import AnomalyDetector
from .methods.base import synchronize
from .methods.scoring import check_fitted_finite, score_batches
from .scores import Scored


def loader(dataset: torch.utils.data.Dataset, cfg: DictConfig, shuffle: bool = False) -> torch.utils.data.DataLoader:
    """The run's data loader over ``dataset`` (``batch_size``, ``num_workers``; page-locked batches on CUDA)."""
    workers, cuda = int(cfg.num_workers), resolve_device(cfg.device).type == "cuda"
    # on CUDA: page-locked batches (asynchronous copies); workers kept across a method's epochs
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=shuffle, num_workers=workers,
                                       pin_memory=cuda, persistent_workers=workers > 0)


@dataclass
class Pipeline:
    """One run's objects, built from its config: the data after its setting, the backbone (behind the feature
    cache when ``cache_dir`` is set), the method, the transform, and the training and test images.
    ``held_out``: normal training images kept out of the fit for the decision threshold (``save_model``);
    ``labelled``: anomalies a semi-supervised method trains on (``method.labelled_anomalies``)."""

    cfg: DictConfig
    data: RunData
    device: torch.device
    backbone: Backbone | CachedBackbone
    cache: CachedBackbone | None
    method: AnomalyDetector
    transform: Transform
    degrader: Degrader | None
    train: ImageDataset
    test: ImageDataset
    labelled: list[Sample]
    held_out: list[Sample]
    fit_seconds: float | None = None  # set by fit
    fit_cache: dict[str, int] = field(default_factory=dict)  # feature-cache counts after the fit

    @property
    def split(self) -> Split:
        return self.data.split

    def loader(self, dataset: torch.utils.data.Dataset, shuffle: bool = False) -> torch.utils.data.DataLoader:
        return loader(dataset, self.cfg, shuffle)

    def _batches(self, dataset: ImageDataset) -> Iterable[dict]:
        batches = self.loader(dataset)
        return batches if self.cache is None else self.cache.track(batches)  # its images may be written to the cache

    def fit(self) -> Pipeline:
        """Fit the method on the training images, within ``fit_memory`` bytes of features in RAM; sets ``fit_seconds``."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        self.method.fit(self._batches(self.train), self.cfg.get("fit_memory"))
        synchronize(self.device)
        self.fit_seconds = time.perf_counter() - start
        check_fitted_finite(self.method)
        self.fit_cache = dict(self.cache.counts) if self.cache is not None else {}
        return self

    def score(self) -> Scored:
        """Scores (and maps, when the data has masks) of the test images."""
        self.method.compute_maps = self.split.has_masks  # image-level data: methods may skip their pixel maps
        return score_batches(self.method, self._batches(self.test), "test images")


def _backbone(cfg: DictConfig) -> tuple[Backbone | CachedBackbone, CachedBackbone | None]:
    """The run's backbone; with ``cache_dir`` every stage is extracted once and cached, later runs with any layers read them."""
    layers = list(cfg.method.layers)
    if not cfg.get("cache_dir"):
        return build_backbone(cfg.backbone, layers), None
    every_stage, layers = stage_layers(cfg.backbone.name, layers)
    cache = CachedBackbone(build_backbone(cfg.backbone, every_stage), cfg.cache_dir, layers)
    return cache, cache


def _labelled(cfg: DictConfig, method: AnomalyDetector, test: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """(labelled anomalies moved from the test set into training, the test images left)."""
    if not cfg.method.get("labelled_anomalies"):
        return [], test
    if not method.learns_from_anomalies:
        raise ConfigError(f"method.labelled_anomalies: method={cfg.method.name} trains on normal images only")
    return labelled_split(test, int(cfg.method.labelled_anomalies), cfg.seed)


def build_pipeline(cfg: DictConfig, data: RunData | None = None) -> Pipeline:
    """Seed, then build the run's objects (``data``: the run's data when already read, else read here).
    Every image is opened once now, so a bad file stops the run before the fit."""
    data = data if data is not None else read_run_data(cfg)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    degrader = degrader_from_config(cfg.dataset.get("degrade"), cfg.seed, cfg.dataset.resize)  # test images only
    device = resolve_device(cfg.device)
    backbone, cache = _backbone(cfg)
    method = build_method(cfg.method, backbone, device, cfg.backbone)
    transform = Transform(cfg.dataset.resize, cfg.dataset.crop, backbone.mean, backbone.std)
    split = data.split
    fit_samples, held_out = holdout_split(split.train, cfg.threshold.holdout, cfg.seed) if cfg.get("save_model") else (split.train, [])
    labelled, test_samples = _labelled(cfg, method, split.test)
    verify_samples([*split.train, *split.test], "training and test images")
    train, test = ImageDataset(fit_samples + labelled, transform), ImageDataset(test_samples, transform, degrader)
    return Pipeline(cfg, data, device, backbone, cache, method, transform, degrader, train, test, labelled, held_out)


def fit_and_score(cfg: DictConfig, data: RunData | None = None) -> tuple[Pipeline, Scored]:
    """Build the run's pipeline, fit its method and score the test images: (the fitted pipeline, the scores)."""
    pipeline = build_pipeline(cfg, data).fit()
    return pipeline, pipeline.score()
