"""One run: build → fit and score (:mod:`adbench.pipeline`) → metrics → record → write (+ example PNGs)."""

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

from .config.build import resolve_device
from .config.run_data import RunData, read_run_data
from .config.schema import validate
from .data.dataset import ImageDataset
from .data.degrade import variant_name
from .data.splits import data_base, split_digest
from .data.transforms import Transform
from .features.backbones import Backbone
from .features.cache import CachedBackbone
from .methods.cost import measure_cost
from .metrics import assess_scored
from .metrics.parts import PartScores, split_by_part
from .metrics.per_image import table_path, write_per_image
from .metrics.registry import HEADLINE
from .metrics.suite import Assessment
from .pipeline import Pipeline, fit_and_score
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
from .scores import Scored
from .serving.model_io import save_model
from .serving.threshold import FEW_HELD_OUT, calibrate_threshold


def feature_map_shapes(backbone: Backbone, size: int) -> list[list]:
    """[layer, C, h, w] of each extracted layer for ``size`` x ``size`` inputs, finest first (memory-bank formulas in the report)."""
    return [[layer, backbone.channels[layer], -(-size // backbone.strides[layer]), -(-size // backbone.strides[layer])] for layer in backbone.layers]


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
    data = read_run_data(cfg)  # the dataset(s) read and the setting's split of them (conf/setting/)
    config, digest = _identity(cfg, data)
    earlier = _earlier_record(cfg, digest)
    if earlier is not None:
        return earlier
    pipeline, out = fit_and_score(cfg, data)
    record = run_record(pipeline, out, config, digest)  # before the metrics: their time and memory are not the method's
    parts, assessed = _assess(pipeline, out)
    record.update(parts[0].fields, **assessed[0].fields)
    if cfg.get("save_model"):
        record["saved_model"] = _save_fitted(Path(cfg.save_model), pipeline, record)
    return _write(pipeline, record, parts, assessed)


def _identity(cfg: DictConfig, data: RunData) -> tuple[dict[str, Any], str]:
    """The record's config and its hash: the files read, by content (``split_digest``), name the data wherever it lives."""
    config = record_config(OmegaConf.to_container(cfg, resolve=True), split_digest(data.source))
    config["device"] = resolve_device(cfg.device).type
    # saving holds training images out for the threshold, a different fit: hash its settings too
    return config, config_hash({**config, "saved_with_threshold": config.get("threshold")} if cfg.get("save_model") else config)


def _earlier_record(cfg: DictConfig, digest: str) -> dict[str, Any] | None:
    """The record of an earlier run of this config, unless ``force=true`` or the model to save is missing."""
    existing = find_record(Path(cfg.results_dir), digest)
    if existing is None or cfg.force or (cfg.get("save_model") and not Path(cfg.save_model).exists()):
        return None
    record = json.loads(existing.read_text())
    print(f"record exists for this config; not rerun (force=true reruns it):\n{_summary(record, existing)}")
    return record


def run_record(pipeline: Pipeline, out: Scored, config: dict[str, Any], digest: str) -> dict[str, Any]:
    """The record's fields before the metrics: what ran, what it cost, and where and when."""
    return {**_what_ran(pipeline), **_cost(pipeline, out), **_provenance(config, digest)}


def _what_ran(p: Pipeline) -> dict[str, Any]:
    cfg = p.cfg
    return {
        "method": cfg.method.name,
        "variant": variant_name(cfg.get("tag"), p.degrader),
        "setting": p.data.describe(),
        "deviations": list(p.method.deviations),  # deliberate differences from the paper / reference code
        "degrade": p.degrader.label if p.degrader else None,
        "backbone": cfg.backbone.name,
        "weights": p.backbone.weights_source,
        "layers": list(cfg.method.layers),
        "feature_maps": feature_map_shapes(p.backbone, cfg.dataset.crop),
        "image_size": cfg.dataset.crop,
        "resize": cfg.dataset.resize,
        "seed": cfg.seed,
        "n_train": len(p.train),
        # moved out of the test set: a contaminated setting's (unlabelled) and a semi-supervised method's (labelled)
        "train_anomalies": [s.image.relative_to(data_base(p.split)).as_posix() for s in p.data.contaminants + p.labelled],
    }


def _cost(p: Pipeline, out: Scored) -> dict[str, Any]:
    bank_shape, cuda = list(p.method.memory_bank_shape), p.device.type == "cuda"
    return {
        "fit_seconds": p.fit_seconds,
        "fit_info": p.method.fit_info,
        "throughput": {"model_images_per_s": out.model_images_per_s, "end_to_end_images_per_s": out.end_to_end_images_per_s},
        "memory_bank": {
            "shape": bank_shape,
            "vectors": bank_shape[0] if len(bank_shape) == 2 else None,
            "dims": bank_shape[1] if len(bank_shape) == 2 else None,
            "bytes": int(p.method.memory_bank_bytes),
        },
        "cost": measure_cost(p.method, p.test, out.model_images_per_s, p.cfg.batch_size),
        "feature_cache": _cache_summary(p.cache, p.fit_cache),
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_gpu_bytes": int(torch.cuda.max_memory_allocated(p.device)) if cuda else None,
        "device": p.device.type,
        "device_name": torch.cuda.get_device_name(p.device) if cuda else "cpu",
    }


def _provenance(config: dict[str, Any], digest: str) -> dict[str, Any]:
    return {
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


def _assess(p: Pipeline, out: Scored) -> tuple[list[PartScores], list[Assessment]]:
    """Per scored category (one unless multi-class): its scores, and its metrics with reasons, per-defect
    breakdown, ci95 and per-image table (adbench/metrics/suite.py)."""
    parts = split_by_part(p.data.parts, out, p.split.has_masks and p.method.pixel_level and out.maps is not None)
    base = data_base(p.split)
    return parts, [assess_scored(s.scored, p.test.samples, base, d.has_masks, p.method.pixel_level, p.cfg.seed) for d, s in zip(p.data.parts, parts)]


def _write(p: Pipeline, record: dict[str, Any], parts: list[PartScores], assessed: list[Assessment]) -> dict[str, Any]:
    """Write one record and per-image table per part (and its example figure); the first part's record."""
    results_dir, written = Path(p.cfg.results_dir), []
    for part, found in zip(parts, assessed):
        part_record = {**record, **part.fields, **found.fields}
        # the table and the record are written as one unit: never a table without its record
        path = write_run(results_dir, part_record, lambda tmp, table=found.table: write_per_image(tmp, table), table_path)
        written.append(part_record)
        if p.cfg.figures:
            images = torch.utils.data.Subset(p.test, part.index.tolist())
            _save_figure(results_dir, part_record, images, p.transform, part.scored, int(p.cfg.figures), part.pixel)
        print(_summary(part_record, path))
    return written[0]


def _save_fitted(path: Path, p: Pipeline, record: dict) -> dict[str, Any]:
    """Set the decision threshold on the held-out normal images, then save the fitted method."""
    cfg = p.cfg
    threshold = calibrate_threshold(p.method, p.loader(ImageDataset(p.held_out, p.transform)), float(cfg.threshold.quantile))
    if len(threshold["held_out"]) < FEW_HELD_OUT:
        print(f"warning: the threshold comes from {len(threshold['held_out'])} held-out image(s) (fewer than {FEW_HELD_OUT}): "
              "it may flag good images; raise threshold.holdout, or set threshold= at predict time", file=sys.stderr)
    info = {k: record[k] for k in ("dataset", "category", "seed", "n_train", "config_hash", "metrics")}
    save_model(path, p.method, OmegaConf.to_container(cfg.method, resolve=True), OmegaConf.to_container(cfg.backbone, resolve=True), p.transform, threshold, info)
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
        f"  {'  '.join(f'{m.label} {_fmt(record, m.name)}' for m in HEADLINE)}  (95% CI)\n"
        f"  fit {record['fit_seconds']:.1f} s  {record['throughput']['model_images_per_s']:.1f} img/s  "
        f"bank {record['memory_bank']['bytes'] / 2**20:.1f} MiB\n"
        f"record: {path}" + (f"\nfigure: {figure}" if figure.is_file() else "")
    )
