"""Score new images with a saved model: ``adbench-predict model=PATH images=FOLDER [out=DIR]``.

Save a model with a run: ``python -m adbench method=patchcore dataset=mvtec save_model=bottle.safetensors``.

The threshold is chosen on held-out normal training images (see :mod:`adbench.serving.threshold`).

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
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw
from scipy import ndimage

from ..config.build import resolve_device
from ..data.dataset import ImageDataset
from ..data.samples import IMAGE_SUFFIXES, Sample
from ..errors import ConfigError, DataError
from ..files import atomic_write, atomic_write_text, ensure_writable
from ..methods import Prediction
from ..methods.scoring import score_batches
from .model_io import load_model


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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: must be an integer >= 1")
    if not isinstance(overlays, bool):
        raise ConfigError(f"overlays={overlays!r}: must be true or false")
    folder, out = Path(images), Path(out)
    paths, skipped = find_images(folder)
    ensure_writable([out], "out")
    saved = load_model(model, resolve_device(device))
    method, transform, threshold = saved.method, saved.transform, saved.threshold
    relative = [p.relative_to(folder) if p != folder else Path(p.name) for p in paths]
    names = overlay_names(relative)
    dataset = ImageDataset([Sample(p, 0) for p in paths], transform)
    batches = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    rows: list[dict[str, Any]] = []

    def write_rows(batch: dict, prediction: Prediction) -> None:
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
                view = transform.denormalize(batch["image"][j]).permute(1, 2, 0).numpy()
                amap = prediction.maps[j] if prediction.maps is not None else None
                atomic_write(target, lambda tmp: render_overlay(view, amap, float(score), threshold).save(tmp, format="PNG"))
                row["overlay"] = target.relative_to(out).as_posix()
            rows.append(row)

    score_batches(method, batches, "predict", keep_maps=False, on_batch=write_rows)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "scores.csv", text.getvalue())
    flagged = sum(1 for r in rows if r["anomalous"] == 1)
    print(f"scored {len(rows)} image(s) from {folder} ({skipped} non-image file(s) skipped); {flagged} above threshold; wrote {out / 'scores.csv'}")
    return rows
