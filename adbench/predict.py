"""Score new images with a saved model: ``python -m adbench.predict model=PATH images=FOLDER [out=DIR]``.

Save a model with a run: ``python -m adbench method=patchcore dataset=mvtec save_model=bottle.safetensors``.

Threshold (chosen on training data only): with ``save_model`` the run holds out a fraction
``threshold.holdout`` (default 0.2, at least one image, drawn with the run's seed) of the normal
training images, fits on the rest, and scores the held-out images. The image threshold is the
``threshold.quantile`` (default 1.0, the maximum) of their image scores: every held-out normal image
scores at or below it. The pixel threshold (outlined in the overlays) is the same quantile of their
per-image maximum map values. A score strictly above the threshold is called anomalous.

Output in ``out`` (default ``predictions``): ``scores.csv`` (path, score, threshold, anomalous,
overlay) and ``overlays/<relative path>.png``: the model's input view (resized and centre-cropped)
beside the anomaly map blended over it (the colour scale runs from the median held-out pixel score
to twice the pixel threshold's distance from it, so the threshold is mid-scale), with a white
outline around pixels above the pixel threshold.

Every image file (by suffix) under ``images`` is scored, recursively; other files are skipped and
counted. An unreadable image stops the run with an error naming the file.
"""

from __future__ import annotations

import csv
import io
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw
from scipy import ndimage

from .datasets import IMAGE_SUFFIXES, ImageDataset, Sample
from .errors import AdbenchError, ConfigError, DataError
from .methods import AnomalyDetector
from .model_io import load_model
from .records import atomic_write_text

USAGE = "usage: python -m adbench.predict model=PATH images=FOLDER [out=DIR] [device=auto] [batch_size=16] [overlays=true]"
OPTIONS = {"model": None, "images": None, "out": "predictions", "device": "auto", "batch_size": "16", "overlays": "true"}


class NonFiniteError(AdbenchError, ValueError):
    """A method's fitted state or scores hold NaN or inf."""


def check_fitted_finite(method: AnomalyDetector) -> None:
    """Raise naming the fitted attribute that holds NaN or inf (e.g. from non-finite features)."""
    for attr in method.fitted_attributes:
        value = getattr(method, attr)
        named = [(f"{attr}.{k}", v) for k, v in value.state_dict().items()] if isinstance(value, torch.nn.Module) else [(attr, value)]
        for name, tensor in named:
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                continue
            if not all(torch.isfinite(part).all() for part in tensor.detach().reshape(-1).split(2**24)):
                raise NonFiniteError(
                    f"method {method.name}: fitted {name} holds NaN or inf after fit (non-finite features of the "
                    "training images, or a numerical failure): check the images, backbone.weights and the method settings"
                )


def check_finite_prediction(method: AnomalyDetector, scores: np.ndarray, maps: np.ndarray | None, paths: list[str]) -> None:
    """Raise naming the images whose image score or anomaly map holds NaN or inf."""
    bad = ~np.isfinite(scores)
    if maps is not None:
        bad |= ~np.isfinite(maps.reshape(len(maps), -1)).all(1)
    if bad.any():
        names = [paths[i] for i in np.flatnonzero(bad)]
        raise NonFiniteError(f"method {method.name} produced NaN or inf scores for {len(names)} image(s), e.g. {names[:3]}")


def calibrate_threshold(method: AnomalyDetector, batches: Iterable[dict], quantile: float) -> dict[str, Any]:
    """Thresholds from scores of held-out normal images (see the module docstring)."""
    if not 0.0 < quantile <= 1.0:
        raise ConfigError(f"threshold.quantile must be in (0, 1], got {quantile}")
    scores, peaks, medians, paths = [], [], [], []
    with torch.no_grad():
        for batch in batches:
            prediction = method.predict(batch["image"])
            check_finite_prediction(method, prediction.image_scores, prediction.maps, list(batch["path"]))
            scores.append(prediction.image_scores)
            paths += list(batch["path"])
            if prediction.maps is not None:
                flat = prediction.maps.reshape(len(prediction.maps), -1)
                peaks.append(flat.max(1))
                medians.append(np.median(flat, 1))
    scores_all = np.concatenate(scores)
    result: dict[str, Any] = {
        "rule": f"quantile {quantile} of the scores of {len(paths)} held-out normal training images",
        "quantile": quantile,
        "image": float(np.quantile(scores_all, quantile)),
        "pixel": float(np.quantile(np.concatenate(peaks), quantile)) if peaks else None,
        "pixel_floor": float(np.median(np.concatenate(medians))) if medians else None,
        "held_out": [Path(p).name for p in paths],
        "held_out_scores": [float(s) for s in scores_all],
    }
    return result


def find_images(folder: Path) -> tuple[list[Path], int]:
    """Image files under ``folder`` (recursive, sorted, hidden files skipped) and how many others were skipped."""
    if folder.is_file():
        return [folder], 0
    if not folder.is_dir():
        raise DataError(f"images={folder}: no such file or folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise DataError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    return images, len(files) - len(images)


def overlay_names(relative: list[Path]) -> list[Path]:
    """``a/b.jpg`` → ``a/b.png``; ``a/b.jpg.png`` when another input would take the same name."""
    plain = [r.with_suffix(".png") for r in relative]
    counts = Counter(plain)
    return [p if counts[p] == 1 else r.with_name(r.name + ".png") for p, r in zip(plain, relative)]


def render_overlay(image: np.ndarray, amap: np.ndarray | None, score: float, threshold: dict[str, Any] | None) -> Image.Image:
    """``image`` (H, W, 3 in [0, 1]) beside the map blended over it, outlined above the pixel threshold."""
    base = (image * 255).round().astype(np.uint8)
    panels = [base]
    if amap is not None:
        pixel = threshold.get("pixel") if threshold else None
        floor = threshold.get("pixel_floor") if threshold else None
        calibrated = pixel is not None and floor is not None and pixel > floor
        if calibrated:  # the pixel threshold sits mid-scale
            level = (amap - floor) / (2 * (pixel - floor))
        else:  # no threshold: this map's own range
            level = (amap - amap.min()) / max(float(amap.max() - amap.min()), 1e-12)
        heat = colormaps["jet"](np.clip(level, 0, 1))[..., :3]
        blend = (0.55 * image + 0.45 * heat) * 255
        if calibrated:
            above = amap > pixel
            blend[above & ~ndimage.binary_erosion(above, iterations=2)] = 255
        panels.append(blend.round().astype(np.uint8))
    picture = Image.fromarray(np.concatenate(panels, axis=1))
    label = f"score {score:.4g}"
    if threshold is not None:
        label += f" / threshold {threshold['image']:.4g}: {'ANOMALOUS' if score > threshold['image'] else 'normal'}"
    draw = ImageDraw.Draw(picture)
    box = draw.textbbox((2, 2), label)
    draw.rectangle(box, fill=(0, 0, 0))
    draw.text((2, 2), label, fill=(255, 255, 255))
    return picture


def predict_folder(model: str | Path, images: str | Path, out: str | Path = "predictions", device: str = "auto", batch_size: int = 16, overlays: bool = True) -> list[dict[str, Any]]:
    """Score every image under ``images`` with the model saved at ``model``; write ``out/scores.csv`` and overlays."""
    from .runner import resolve_device  # runner imports this module

    folder, out = Path(images), Path(out)
    paths, skipped = find_images(folder)
    saved = load_model(model, resolve_device(device))
    method, transform, threshold = saved.method, saved.transform, saved.threshold
    relative = [p.relative_to(folder) if p != folder else Path(p.name) for p in paths]
    names = overlay_names(relative)
    dataset = ImageDataset([Sample(p, 0) for p in paths], transform)
    batches = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        for batch in batches:
            prediction = method.predict(batch["image"])
            check_finite_prediction(method, prediction.image_scores, prediction.maps, list(batch["path"]))
            for j, score in enumerate(prediction.image_scores):
                i = len(rows)
                row = {
                    "path": relative[i].as_posix(),
                    "score": float(score),
                    "threshold": threshold["image"] if threshold else "",
                    "anomalous": int(score > threshold["image"]) if threshold else "",
                    "overlay": "",
                }
                if overlays:
                    target = out / "overlays" / names[i]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    view = transform.denormalize(batch["image"][j]).permute(1, 2, 0).numpy()
                    amap = prediction.maps[j] if prediction.maps is not None else None
                    render_overlay(view, amap, float(score), threshold).save(target)
                    row["overlay"] = target.relative_to(out).as_posix()
                rows.append(row)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "scores.csv", text.getvalue())
    flagged = sum(1 for r in rows if r["anomalous"] == 1)
    print(f"scored {len(rows)} image(s) from {folder} ({skipped} non-image file(s) skipped); {flagged} above threshold; wrote {out / 'scores.csv'}")
    return rows


def parse_args(argv: list[str]) -> dict[str, str]:
    """``key=value`` arguments over ``OPTIONS``; ConfigError on unknown or missing keys."""
    options = dict(OPTIONS)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in OPTIONS:
            raise ConfigError(f"unknown argument {arg!r}; valid keys: {', '.join(OPTIONS)}\n{USAGE}")
        options[key] = value
    missing = [k for k, v in options.items() if v is None]
    if missing:
        raise ConfigError(f"missing {', '.join(k + '=...' for k in missing)}\n{USAGE}")
    return options


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    try:
        o = parse_args(sys.argv[1:] if argv is None else argv)
        if not o["batch_size"].isdigit() or int(o["batch_size"]) < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {o['batch_size']!r}")
        if o["overlays"].lower() not in ("true", "false"):
            raise ConfigError(f"overlays must be true or false, got {o['overlays']!r}")
        return predict_folder(o["model"], o["images"], o["out"], o["device"], int(o["batch_size"]), o["overlays"].lower() == "true")
    except AdbenchError as exc:
        print(f"adbench.predict: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
