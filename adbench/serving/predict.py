"""Score new images with a saved model: ``adbench-predict model=PATH images=FOLDER [out=DIR]``.

Save a model with a run: ``python -m adbench method=patchcore dataset=mvtec save_model=bottle.safetensors``.

The threshold is chosen on held-out normal training images (see :mod:`adbench.serving.threshold`).

Output in ``out`` (default ``predictions``): ``scores.csv`` (path, score, threshold, anomalous,
overlay, map) and ``overlays/<relative path>.png``: the model's input view (resized and centre-cropped)
beside the anomaly map blended over it (the colour scale runs from the median held-out pixel score
to twice the pixel threshold's distance from it, so the threshold is mid-scale), with a white
outline around pixels above the pixel threshold. With ``maps=npy|tiff`` also ``maps/<relative path>.npy``
(or ``.tiff``, float32): the anomaly map at the image's original resolution (the inverse of the square
resize and centre crop, bilinear; pixels outside the crop, which the model never saw, are NaN).

The outputs of one call replace those of an earlier call into the same ``out`` together, at the end
(written in a hidden staging folder first): no overlay of an earlier run is left beside new scores.
``threshold=VALUE`` replaces the saved image threshold; a saved threshold from fewer than
``FEW_HELD_OUT`` held-out images is used with a warning.

Every image file (by suffix) under ``images`` is scored, recursively; other files are skipped and
counted. Every image is decoded first: unreadable ones are skipped and named, the others scored and
written, and the command then ends with an error (exit code 2) listing the unreadable files.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import sys
import tempfile
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
from ..data.samples import IMAGE_SUFFIXES, Sample, image_size, read_image
from ..data.transforms import Transform
from ..errors import ConfigError, DataError
from ..files import OutputError, ensure_writable
from ..methods import Prediction
from ..methods.scoring import score_batches
from .model_io import load_model
from .threshold import FEW_HELD_OUT

MAP_FORMATS = ("npy", "tiff")
OUTPUTS = ("scores.csv", "overlays", "maps")  # what a call writes into ``out`` (and replaces there)


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


def original_resolution(amap: np.ndarray, transform: Transform, size: tuple[int, int]) -> np.ndarray:
    """A map of the model's view (square resize to ``transform.resize``, centre crop ``transform.crop``) back on
    the original ``size`` (width, height) image grid: bilinear, NaN where the crop cut the image off."""
    width, height = size
    r, c = transform.resize, transform.crop
    offset = int(round((r - c) / 2.0))  # torchvision's centre-crop offset

    def axis(n: int, m: int) -> np.ndarray:  # original pixel centres → map coordinates
        resized = (np.arange(n) + 0.5) * r / n - 0.5
        return (resized - offset + 0.5) * m / c - 0.5

    ys, xs = axis(height, amap.shape[0]), axis(width, amap.shape[1])
    grid = np.meshgrid(ys, xs, indexing="ij")
    out = ndimage.map_coordinates(amap.astype(np.float64), grid, order=1, mode="nearest").astype(np.float32)
    inside_y = (ys >= -0.5) & (ys <= amap.shape[0] - 0.5)
    inside_x = (xs >= -0.5) & (xs <= amap.shape[1] - 0.5)
    out[~(inside_y[:, None] & inside_x[None, :])] = np.nan
    return out


def _check_options(batch_size: object, overlays: object, threshold: object, maps: object) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: must be an integer >= 1")
    if not isinstance(overlays, bool):
        raise ConfigError(f"overlays={overlays!r}: must be true or false")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not np.isfinite(threshold)):
        raise ConfigError(f"threshold={threshold!r}: must be a number (an image score), or null for the saved model's")
    if maps is not None and maps not in MAP_FORMATS:
        raise ConfigError(f"maps={maps!r}: must be {' or '.join(MAP_FORMATS)}, or null for none")


def _readable(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """The images that decode, and one line per one that does not."""
    good, bad = [], []
    for path in paths:
        try:
            read_image(path)
            good.append(path)
        except DataError as exc:
            bad.append(str(exc))
    return good, bad


def _publish(staging: Path, out: Path) -> None:
    """Replace ``out``'s outputs of an earlier call by those in ``staging`` (then removed)."""
    for name in OUTPUTS:
        old = out / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
        if (staging / name).exists():
            os.replace(staging / name, old)


def predict_folder(model: str | Path, images: str | Path, out: str | Path = "predictions", device: str = "auto", batch_size: int = 16,
                   overlays: bool = True, threshold: float | None = None, maps: str | None = None) -> list[dict[str, Any]]:
    """Score every readable image under ``images`` with the model saved at ``model``; write ``out/scores.csv``,
    overlays and (``maps``) original-resolution maps; DataError at the end naming any unreadable image."""
    _check_options(batch_size, overlays, threshold, maps)
    folder, out = Path(images), Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out}: is a file; give a folder")
    ensure_writable([out], "out")
    paths, skipped = find_images(folder)
    saved = load_model(model, resolve_device(device))
    method, transform, chosen = saved.method, saved.transform, saved.threshold
    if threshold is not None:
        chosen = {**(chosen or {}), "image": float(threshold), "rule": f"threshold={threshold} given at predict time"}
    elif chosen is not None and len(chosen.get("held_out") or []) < FEW_HELD_OUT:
        print(f"warning: the saved threshold {chosen['image']:.4g} comes from {len(chosen.get('held_out') or [])} held-out image(s) "
              f"(fewer than {FEW_HELD_OUT}): it may flag good images; threshold=VALUE overrides it", file=sys.stderr)
    paths, unreadable = _readable(paths)
    if not paths:
        raise DataError(f"no readable image under {folder}: " + "; ".join(unreadable))
    relative = [p.relative_to(folder) if p != folder else Path(p.name) for p in paths]
    names = overlay_names(relative)
    dataset = ImageDataset([Sample(p, 0) for p in paths], transform)
    batches = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    rows: list[dict[str, Any]] = []
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".adbench-predict."))

    def write_rows(batch: dict, prediction: Prediction) -> None:
        for j, score in enumerate(prediction.image_scores):
            i = len(rows)
            row = {
                "path": relative[i].as_posix(),
                "score": float(score),
                "threshold": chosen["image"] if chosen else "",
                "anomalous": int(score > chosen["image"]) if chosen else "",
                "overlay": "",
                "map": "",
            }
            amap = prediction.maps[j] if prediction.maps is not None else None
            if overlays:
                target = Path("overlays") / names[i]
                (staging / target).parent.mkdir(parents=True, exist_ok=True)
                view = transform.denormalize(batch["image"][j]).permute(1, 2, 0).numpy()
                render_overlay(view, amap, float(score), chosen).save(staging / target, format="PNG")
                row["overlay"] = target.as_posix()
            if maps and amap is not None:
                target = Path("maps") / names[i].with_suffix(f".{maps}")
                (staging / target).parent.mkdir(parents=True, exist_ok=True)
                full = original_resolution(np.asarray(amap), transform, image_size(paths[i]))
                if maps == "npy":
                    np.save(staging / target, full)
                else:
                    Image.fromarray(full, mode="F").save(staging / target, format="TIFF")
                row["map"] = target.as_posix()
            rows.append(row)

    try:
        score_batches(method, batches, "predict", keep_maps=False, on_batch=write_rows)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (staging / "scores.csv").write_text(text.getvalue())
        _publish(staging, out)
    except OSError as exc:
        raise OutputError(f"cannot write the predictions to out={out}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    flagged = sum(1 for r in rows if r["anomalous"] == 1)
    print(f"scored {len(rows)} image(s) from {folder} ({skipped} non-image file(s) skipped); {flagged} above threshold; wrote {out / 'scores.csv'}")
    if unreadable:
        raise DataError(f"{len(unreadable)} unreadable image(s) skipped (the others were scored): " + "; ".join(unreadable))
    return rows
