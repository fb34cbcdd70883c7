"""One run: config → data → backbone → method → scores → metrics → record (+ example PNG)."""

from __future__ import annotations

import inspect
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .backbones import Backbone
from .datasets import ImageDataset, Split, load_split
from .errors import ConfigError
from .figures import pick_examples, save_examples
from .methods import AnomalyDetector, method_class
from .metrics import evaluate
from .records import config_hash, find_record, git_commit, library_versions, write_record
from .transforms import Transform


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available; use device=cpu or device=auto")
    return torch.device(name)


def build_backbone(cfg: DictConfig, layers: list[str]) -> Backbone:
    return Backbone(cfg.name, layers, pretrained=cfg.get("pretrained", True), weights=cfg.get("weights"))


def method_params(method_cfg: DictConfig) -> dict[str, Any]:
    params = OmegaConf.to_container(method_cfg, resolve=True)
    params.pop("name", None)
    return params


def build_method(method_cfg: DictConfig, backbone: Backbone, device: torch.device) -> AnomalyDetector:
    """Instantiate ``method.name`` with the other ``method.*`` keys as constructor arguments."""
    cls = method_class(method_cfg.name)
    params = method_params(method_cfg)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "backbone", "device"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(f"method={method_cfg.name}: unknown key(s) {', '.join('method.' + k for k in unknown)}; valid: {', '.join(sorted(accepted))}")
    return cls(backbone=backbone, device=device, **params)


def load_data(cfg: DictConfig) -> Split:
    d = cfg.dataset
    options = {k: v for k, v in OmegaConf.to_container(d, resolve=True).items() if k not in {"name", "root", "category", "resize", "crop", "label"}}
    return load_split(d.name, d.get("root"), d.category, **options)


def loader(dataset: ImageDataset, cfg: DictConfig, shuffle: bool = False) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=shuffle, num_workers=cfg.num_workers)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def score_test_set(method: AnomalyDetector, batches, device: torch.device) -> dict[str, Any]:
    """Predict every test batch; time the model alone and the whole loop."""
    labels, scores, masks, maps = [], [], [], []
    model_seconds, start = 0.0, time.perf_counter()
    for batch in batches:
        _sync(device)
        t0 = time.perf_counter()
        prediction = method.predict(batch["image"])
        _sync(device)
        model_seconds += time.perf_counter() - t0
        labels.append(np.asarray(batch["label"]))
        scores.append(prediction.image_scores)
        masks.append(batch["mask"].numpy().astype(bool))
        if prediction.maps is not None:
            maps.append(prediction.maps)
    total = time.perf_counter() - start
    n = sum(len(x) for x in labels)
    return {
        "labels": np.concatenate(labels),
        "scores": np.concatenate(scores),
        "masks": np.concatenate(masks),
        "maps": np.concatenate(maps) if maps else None,
        "model_images_per_s": n / model_seconds,
        "end_to_end_images_per_s": n / total,
    }


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one config end to end and write its record; returns the record."""
    config = OmegaConf.to_container(cfg, resolve=True)
    device = resolve_device(cfg.device)
    config["device"] = device.type
    digest = config_hash(config)
    results_dir = Path(cfg.results_dir)
    existing = find_record(results_dir, digest)
    if existing is not None and not cfg.force:
        print(f"record exists for this config ({existing}); skipping (force=true reruns)")
        import json

        return json.loads(existing.read_text())

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    split = load_data(cfg)
    backbone = build_backbone(cfg.backbone, list(cfg.method.layers))
    method = build_method(cfg.method, backbone, device)
    transform = Transform(cfg.dataset.resize, cfg.dataset.crop, backbone.mean, backbone.std)
    train, test = ImageDataset(split.train, transform), ImageDataset(split.test, transform)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    start = time.perf_counter()
    method.fit(loader(train, cfg))
    _sync(device)
    fit_seconds = time.perf_counter() - start
    out = score_test_set(method, loader(test, cfg), device)

    pixel = split.has_masks and method.pixel_level and out["maps"] is not None
    metrics = evaluate(out["labels"], out["scores"], out["masks"] if pixel else None, out["maps"] if pixel else None)
    bank_shape = list(method.memory_bank_shape)
    record = {
        "method": cfg.method.name,
        "variant": cfg.get("tag"),
        "backbone": cfg.backbone.name,
        "weights": backbone.weights_source,
        "layers": list(cfg.method.layers),
        "image_size": cfg.dataset.crop,
        "resize": cfg.dataset.resize,
        "dataset": cfg.dataset.get("label", cfg.dataset.name),
        "category": split.category,
        "group": split.group,
        "seed": cfg.seed,
        "n_train": len(train),
        "n_test": len(test),
        "metrics": metrics,
        "pixel_metrics": "computed" if pixel else "not applicable (no masks or image-level method)",
        "fit_seconds": fit_seconds,
        "fit_info": method.fit_info,
        "throughput": {
            "model_images_per_s": out["model_images_per_s"],
            "end_to_end_images_per_s": out["end_to_end_images_per_s"],
        },
        "memory_bank": {
            "shape": bank_shape,
            "vectors": bank_shape[0] if len(bank_shape) == 2 else None,
            "dims": bank_shape[1] if len(bank_shape) == 2 else None,
            "bytes": int(method.memory_bank_bytes),
        },
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_gpu_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "versions": library_versions(),
        "git_commit": git_commit(),
        "config_hash": digest,
        "config": config,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = write_record(results_dir, record)
    if cfg.figures:
        _save_figure(results_dir, record, test, transform, out, int(cfg.figures), pixel)
    print(_summary(record, path))
    return record


def _save_figure(results_dir: Path, record: dict, test: ImageDataset, transform: Transform, out: dict, count: int, pixel: bool) -> None:
    chosen = pick_examples(out["labels"], count)
    images = np.stack([transform.denormalize(test[i]["image"]).permute(1, 2, 0).numpy() for i in chosen])
    name = f"{record['dataset']}_{record['category']}_{record['method']}_{record['config_hash']}.png".replace("/", "-")
    save_examples(
        results_dir / "figures" / name,
        images,
        out["masks"][chosen] if pixel else None,
        out["maps"][chosen] if out["maps"] is not None else None,
        out["scores"][chosen],
        f"{record['method']} · {record['backbone']} · {record['dataset']}/{record['category']}",
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _summary(record: dict, path: Path) -> str:
    m = record["metrics"]
    return (
        f"{record['method']} on {record['dataset']}/{record['category']} ({record['backbone']}, {record['image_size']} px): "
        f"I-AUROC {_fmt(m['image_auroc'])}  P-AUROC {_fmt(m['pixel_auroc'])}  AUPRO {_fmt(m['aupro'])}  "
        f"fit {record['fit_seconds']:.1f} s  {record['throughput']['model_images_per_s']:.1f} img/s  "
        f"bank {record['memory_bank']['bytes'] / 2**20:.1f} MiB\nrecord: {path}"
    )
