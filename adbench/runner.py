"""One run: config → data → backbone → method → scores → metrics → record (+ example PNG)."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .config.build import build_backbone, build_method, resolve_device
from .config.schema import validate
from .config.setting import load_dataset, part_results, setting_data
from .data.dataset import ImageDataset
from .data.degrade import degrader_from_config, variant_name
from .data.samples import Split, data_base, split_digest, verify_samples
from .data.splits import holdout_split, labelled_split
from .data.transforms import Transform
from .errors import ConfigError
from .features.backbones import Backbone
from .features.cache import CachedBackbone, stage_layers
from .features.store import fit_memory
from .methods import AnomalyDetector
from .methods.cost import measure_cost
from .methods.scoring import Scored, check_fitted_finite, score_batches
from .metrics import assess_scored
from .metrics.per_image import table_path, write_per_image
from .results.figures import pick_examples, save_examples
from .results.records import (
    config_hash,
    find_record,
    git_commit,
    library_versions,
    portable_path,
    record_config,
    write_run,
)
from .serving.model_io import save_model
from .serving.threshold import FEW_HELD_OUT, calibrate_threshold


def feature_map_shapes(backbone: Backbone, size: int) -> list[list]:
    """[layer, C, h, w] of each extracted layer for ``size`` x ``size`` inputs, finest first (memory-bank formulas in the report)."""
    return [[layer, backbone.channels[layer], -(-size // backbone.strides[layer]), -(-size // backbone.strides[layer])] for layer in backbone.layers]


def load_data(cfg: DictConfig) -> Split:
    return load_dataset(cfg.dataset)


def loader(dataset: ImageDataset, cfg: DictConfig, shuffle: bool = False) -> torch.utils.data.DataLoader:
    workers, cuda = int(cfg.num_workers), resolve_device(cfg.device).type == "cuda"
    # on CUDA: page-locked batches (asynchronous copies); workers kept across a method's epochs
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=shuffle, num_workers=workers,
                                       pin_memory=cuda, persistent_workers=workers > 0)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """Every tqdm bar made inside is disabled (``quiet=true``: logs that are not a terminal)."""
    from tqdm import std

    original = std.tqdm.__init__

    def quiet(self, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **{**kwargs, "disable": True})

    std.tqdm.__init__ = quiet
    try:
        yield
    finally:
        std.tqdm.__init__ = original


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one config end to end and write its record; returns the record (``quiet=true``: without progress bars)."""
    validate(cfg)
    with no_progress_bars() if cfg.get("quiet") else nullcontext():
        return _run(cfg)


def _run(cfg: DictConfig) -> dict[str, Any]:
    data = setting_data(cfg)  # the dataset(s) read and the setting's split of them (conf/setting/)
    split = data.split
    # the files read, by content (split_digest), name the data in the config hash, wherever it lives
    config = record_config(OmegaConf.to_container(cfg, resolve=True), split_digest(data.source))
    device = resolve_device(cfg.device)
    config["device"] = device.type
    save_path = Path(cfg.save_model) if cfg.get("save_model") else None
    # saving holds training images out for the threshold, a different fit: hash its settings too
    digest = config_hash({**config, "saved_with_threshold": config.get("threshold")} if save_path else config)
    results_dir = Path(cfg.results_dir)
    existing = find_record(results_dir, digest)
    if existing is not None and not cfg.force and not (save_path and not save_path.exists()):
        record = json.loads(existing.read_text())
        print(f"record exists for this config; not rerun (force=true reruns it):\n{_summary(record, existing)}")
        return record

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    degrader = degrader_from_config(cfg.dataset.get("degrade"), cfg.seed, cfg.dataset.resize)  # test images only
    layers = list(cfg.method.layers)
    if cfg.get("cache_dir"):  # every stage extracted once and cached: later runs with any layers read them from disk
        every_stage, layers = stage_layers(cfg.backbone.name, layers)
        backbone = cache = CachedBackbone(build_backbone(cfg.backbone, every_stage), cfg.cache_dir, layers)
    else:
        backbone, cache = build_backbone(cfg.backbone, layers), None
    method = build_method(cfg.method, backbone, device, cfg.backbone)
    transform = Transform(cfg.dataset.resize, cfg.dataset.crop, backbone.mean, backbone.std)
    fit_samples, held_out = holdout_split(split.train, cfg.threshold.holdout, cfg.seed) if save_path else (split.train, [])
    labelled, test_samples = [], split.test
    if cfg.method.get("labelled_anomalies"):
        if not method.learns_from_anomalies:
            raise ConfigError(f"method.labelled_anomalies: method={cfg.method.name} trains on normal images only")
        labelled, test_samples = labelled_split(split.test, int(cfg.method.labelled_anomalies), cfg.seed)
    verify_samples([*split.train, *split.test], "training and test images")  # a bad file stops the run now, not after the fit
    train, test = ImageDataset(fit_samples + labelled, transform), ImageDataset(test_samples, transform, degrader)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    start = time.perf_counter()
    train_batches, test_batches = loader(train, cfg), loader(test, cfg)
    if cache is not None:  # dataset images may be written to the feature cache
        train_batches, test_batches = cache.track(train_batches), cache.track(test_batches)
    with fit_memory(cfg.get("fit_memory")):  # training features beyond this many bytes go to a temporary file
        method.fit(train_batches)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    fit_seconds = time.perf_counter() - start
    check_fitted_finite(method)
    fit_cache = dict(cache.counts) if cache is not None else {}
    method.compute_maps = split.has_masks  # image-level data: methods may skip their pixel maps
    out = score_batches(method, test_batches, "test images")

    pixel = split.has_masks and method.pixel_level and out.maps is not None
    bank_shape = list(method.memory_bank_shape)
    record = {
        "method": cfg.method.name,
        "variant": variant_name(cfg.get("tag"), degrader),
        "setting": data.describe(),
        "deviations": list(method.deviations),  # deliberate differences from the paper / reference code
        "degrade": degrader.label if degrader else None,
        "backbone": cfg.backbone.name,
        "weights": backbone.weights_source,
        "layers": list(cfg.method.layers),
        "feature_maps": feature_map_shapes(backbone, cfg.dataset.crop),
        "image_size": cfg.dataset.crop,
        "resize": cfg.dataset.resize,
        "seed": cfg.seed,
        "n_train": len(train),
        # moved out of the test set: a contaminated setting's (unlabelled) and a semi-supervised method's (labelled)
        "train_anomalies": [s.image.relative_to(data_base(split)).as_posix() for s in data.contaminants + labelled],
        "fit_seconds": fit_seconds,
        "fit_info": method.fit_info,
        "throughput": {
            "model_images_per_s": out.model_images_per_s,
            "end_to_end_images_per_s": out.end_to_end_images_per_s,
        },
        "memory_bank": {
            "shape": bank_shape,
            "vectors": bank_shape[0] if len(bank_shape) == 2 else None,
            "dims": bank_shape[1] if len(bank_shape) == 2 else None,
            "bytes": int(method.memory_bank_bytes),
        },
        "cost": measure_cost(method, test, out.model_images_per_s, cfg.batch_size),
        "feature_cache": _cache_summary(cache, fit_cache),
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_gpu_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "versions": library_versions(),
        "git_commit": git_commit(),
        "config_hash": digest,
        "config": config,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),  # 1/5/15-min load at the end of the run: timings on a busy machine are flagged
        "pid": os.getpid(),
    }
    parts = part_results(data, out, pixel)  # dataset, category and test images per scored category (one unless multi-class)
    # per part: metrics with reasons, per-defect, ci95 and the per-image table written beside the record (adbench/metrics/suite.py)
    assessed = [assess_scored(p.scored, test_samples, data_base(split), d.has_masks, method.pixel_level, cfg.seed) for d, p in zip(data.parts, parts)]
    record.update(parts[0].fields, **assessed[0].fields)
    if save_path:
        record["saved_model"] = _save_fitted(save_path, cfg, method, transform, loader(ImageDataset(held_out, transform), cfg), record)
    written = []
    for part, found in zip(parts, assessed):
        part_record = {**record, **part.fields, **found.fields}
        # the table and the record are written as one unit: never a table without its record
        path = write_run(results_dir, part_record, lambda tmp, table=found.table: write_per_image(tmp, table), table_path)
        written.append(part_record)
        if cfg.figures:
            _save_figure(results_dir, part_record, torch.utils.data.Subset(test, part.index.tolist()), transform, part.scored, int(cfg.figures), part.pixel)
        print(_summary(part_record, path))
    return written[0]


def _save_fitted(path: Path, cfg: DictConfig, method: AnomalyDetector, transform: Transform, held_out, record: dict) -> dict[str, Any]:
    """Set the decision threshold on the held-out normal images, then save the fitted method."""
    threshold = calibrate_threshold(method, held_out, float(cfg.threshold.quantile))
    if len(threshold["held_out"]) < FEW_HELD_OUT:
        print(f"warning: the threshold comes from {len(threshold['held_out'])} held-out image(s) (fewer than {FEW_HELD_OUT}): "
              "it may flag good images; raise threshold.holdout, or set threshold= at predict time", file=sys.stderr)
    info = {k: record[k] for k in ("dataset", "category", "seed", "n_train", "config_hash", "metrics")}
    save_model(path, method, OmegaConf.to_container(cfg.method, resolve=True), OmegaConf.to_container(cfg.backbone, resolve=True), transform, threshold, info)
    print(f"model saved to {path} (threshold {threshold['image']:.4g}: {threshold['rule']})")
    return {"path": portable_path(path), "threshold": threshold}


def _cache_summary(cache: CachedBackbone | None, fit_counts: dict[str, int]) -> dict[str, Any] | None:
    """Feature-cache use per phase: images served from disk (hits) or computed (misses) in fit and test."""
    if cache is None:
        return None
    keys = ("hits", "misses", "stored", "bypassed")
    fit = {k: fit_counts.get(k, 0) for k in keys}
    test = {k: cache.counts[k] - fit[k] for k in keys}
    return {**cache.summary(), "fit": fit, "test": test}


def _save_figure(results_dir: Path, record: dict, test: ImageDataset, transform: Transform, out: Scored, count: int, pixel: bool) -> None:
    chosen = pick_examples(out.labels, count)
    images = np.stack([transform.denormalize(test[i]["image"]).permute(1, 2, 0).numpy() for i in chosen])
    save_examples(
        _figure_path(results_dir, record),
        images,
        out.masks[chosen] if pixel else None,
        out.maps[chosen] if out.maps is not None else None,
        out.scores[chosen],
        f"{record['method']} · {record['backbone']} · {record['dataset']}/{record['category']}",
    )


def _figure_path(results_dir: Path, record: dict) -> Path:
    name = f"{record['dataset']}_{record['category']}_{record['method']}_{record['config_hash']}.png".replace("/", "-")
    return results_dir / "figures" / name


def _fmt(record: dict, metric: str) -> str:
    value, ci = record["metrics"].get(metric), (record.get("ci95") or {}).get(metric)
    if value is None:
        reason = (record.get("metrics_undefined") or {}).get(metric)
        return f"n/a ({reason})" if reason else "n/a"
    return f"{value:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else "")


def _summary(record: dict, path: Path) -> str:
    """The run's headline metrics (with 95% bootstrap CIs), cost, and where its record and figure are."""
    figure = _figure_path(path.parent.parent, record)
    return (
        f"{record['method']} on {record['dataset']}/{record['category']} ({record['backbone']}, {record['image_size']} px, "
        f"{record.get('n_train')} train / {record.get('n_test')} test images):\n"
        f"  I-AUROC {_fmt(record, 'image_auroc')}  P-AUROC {_fmt(record, 'pixel_auroc')}  AUPRO {_fmt(record, 'aupro')}  (95% CI)\n"
        f"  fit {record['fit_seconds']:.1f} s  {record['throughput']['model_images_per_s']:.1f} img/s  "
        f"bank {record['memory_bank']['bytes'] / 2**20:.1f} MiB\n"
        f"record: {path}" + (f"\nfigure: {figure}" if figure.is_file() else "")
    )
