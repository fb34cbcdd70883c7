"""Failure galleries for the HTML report (``adbench-report format=html gallery=true``).

For every current run whose dataset has pixel masks and is present on this machine: the worst false negatives
(anomalous test images scored lowest, below the threshold) and the worst false positives (normal images scored
highest, at or above it), each as the model's input view, its anomaly map and the ground-truth mask, with the
score and the threshold. The threshold is the run's saved model's (held-out normal images) when the model file
is present, else the image score that maximises F1 on the test set (the image F1-max of the record). Maps come
from the saved model (``save_model=PATH``); a run without one shows image and mask only, and says so.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from omegaconf import OmegaConf
from PIL import Image
from sklearn.metrics import precision_recall_curve

from .config.run_data import load_dataset
from .data.dataset import ImageDataset
from .data.splits import data_base
from .data.transforms import Transform
from .errors import AdbenchError
from .metrics.per_image import read_per_image
from .results.table import current, load
from .serving.model_io import load_model


def png_uri(array: np.ndarray) -> str:
    """An (H, W) or (H, W, 3) array in [0, 1] as a PNG data URI."""
    buffer = io.BytesIO()
    Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The image score at which F1 on these test images is highest (sklearn's precision-recall curve)."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def worst_cases(table: pd.DataFrame, threshold: float, count: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(false negatives lowest-scored first, false positives highest-scored first), ``count`` of each at most."""
    negatives = table[(table.label == 1) & (table.score < threshold)].sort_values("score").head(count)
    positives = table[(table.label == 0) & (table.score >= threshold)].sort_values("score", ascending=False).head(count)
    return negatives, positives


def _figure(uri: str, caption: str) -> str:
    return f'<figure><img src="{uri}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def run_gallery(name: str, record: dict[str, Any], table: pd.DataFrame, count: int = 3) -> str | None:
    """The gallery of one run as an HTML fragment; None when its data has no masks or is not on this machine."""
    dataset = dict(record["config"]["dataset"])
    if isinstance(dataset.get("root"), str):
        dataset["root"] = os.path.expandvars(dataset["root"])  # records write the data root as $ADBENCH_DATA/...
    try:
        split = load_dataset(OmegaConf.create(dataset))
    except AdbenchError:
        return None
    if not split.has_masks:
        return None
    saved = record.get("saved_model") or {}
    model = load_model(saved["path"]) if saved.get("path") and Path(saved["path"]).is_file() else None
    if model is not None and model.threshold:
        threshold, rule = float(model.threshold["image"]), f"the saved model's ({model.threshold.get('rule', 'held-out normal images')})"
    else:
        threshold, rule = f1_threshold(table.label.to_numpy(), table.score.to_numpy()), "F1-max on the test images"
    transform = model.transform if model is not None else Transform(int(record["resize"]), int(record["image_size"]))
    by_path = {s.image.relative_to(data_base(split)).as_posix(): s for s in split.test}
    negatives, positives = worst_cases(table, threshold, count)
    parts = [f"<h3>{html.escape(name)} · {html.escape(record['dataset'])}/{html.escape(str(record['category']))}</h3>",
             f"<p>Threshold {threshold:.4g} ({html.escape(rule)}). "
             + ("Maps from the saved model." if model is not None else "No anomaly maps: the run kept no model (save_model=PATH).") + "</p>"]
    for title, rows in (("Worst false negatives (anomalous, scored lowest)", negatives), ("Worst false positives (normal, scored highest)", positives)):
        parts.append(f"<h4>{title}</h4>")
        if rows.empty:
            parts.append("<p>none at this threshold</p>")
        for row in rows.itertuples():
            item = ImageDataset([by_path[row.path]], transform)[0]
            panels = [_figure(png_uri(transform.denormalize(item["image"]).permute(1, 2, 0).numpy()), f"{row.path} score {row.score:.4g}")]
            if model is not None:
                amap = model.method.predict(item["image"][None]).maps[0]
                scale = max(float(table.score.max()), threshold, 1e-12)  # one colour scale per run: 0 .. the largest image score
                panels.append(_figure(png_uri(colormaps["jet"](np.clip(amap / scale, 0, 1))[..., :3]), "anomaly map"))
            panels.append(_figure(png_uri(item["mask"].numpy()), f"ground truth ({row.defect})"))
            parts.append('<div class="case">' + "".join(panels) + "</div>")
    return "\n".join(parts)


def galleries(results_dir: Path, count: int = 3) -> list[str]:
    """The galleries of every current run of ``results_dir`` whose data (with masks) is present."""
    runs = current(load(results_dir))
    found = []
    for row in runs.itertuples():
        if not isinstance(row.per_image, str):
            continue
        record = json.loads((Path(results_dir) / row.record).read_text())
        fragment = run_gallery(row.name, record, read_per_image(Path(results_dir) / row.per_image), count)
        if fragment is not None:
            found.append(fragment)
    return found
