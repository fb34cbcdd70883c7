"""The Python API for notebooks: :func:`run` one benchmark, :func:`load_model` a saved one.

>>> import adbench
>>> result = adbench.run(method="padim", dataset="synthetic", figures=0)
>>> result.record["metrics"]["image_auroc"], len(result.table)
>>> model = adbench.load_model("bottle.safetensors")      # saved by a run with save_model=PATH
>>> found = model.predict(["a.png", "b.png"])             # .scores, .maps (each at its image's size), .anomalous

``run`` composes the same config as ``adbench key=value ...`` (conf/config.yaml, installed plugins
included) and runs it through :func:`adbench.runner.run`; bad input raises :class:`adbench.errors.AdbenchError`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from PIL import Image

from .config import CONF_PACKAGE
from .config.build import resolve_device
from .config.searchpath import register_search_path
from .config.run_data import read_run_data
from .data.samples import read_image
from .data.splits import data_base
from .errors import ConfigError
from .metrics.per_image import read_per_image
from .results.records import record_path
from .runner import run as run_config
from .serving.model_io import load_model as load_saved

ImageLike = str | Path | Image.Image | np.ndarray
PLAIN = re.compile(r"[\w./\-:+@]+")  # values Hydra's override grammar reads unquoted


def _value(value: Any) -> str:
    """A Python value in Hydra's override syntax."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    return text if PLAIN.fullmatch(text) else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def overrides_of(options: dict[str, Any]) -> list[str]:
    """Keyword arguments as Hydra overrides: ``method__coreset_ratio=0.01`` (or ``**{"method.coreset_ratio": 0.01}``)
    → ``method.coreset_ratio=0.01``; ``__`` stands for the dot, as in scikit-learn's ``set_params``."""
    return [f"{key.replace('__', '.')}={_value(value)}" for key, value in options.items()]


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed, unvalidated ``conf/config.yaml`` for these overrides (what ``adbench OVERRIDES`` runs)."""
    register_search_path()
    try:
        with initialize_config_module(CONF_PACKAGE, version_base=None):
            return compose(config_name="config", overrides=list(overrides))
    except Exception as exc:  # noqa: BLE001 - Hydra's composition errors name the key; one ConfigError for the caller
        raise ConfigError(" ".join(str(exc).split())[:500]) from exc


@dataclass
class RunResult:
    """A run's record (the JSON document written to ``results_dir/records``), its per-image table (path, label,
    defect, score, ...) and ``base``, the folder the table's paths are relative to."""

    record: dict[str, Any]
    table: pd.DataFrame
    base: Path

    def __iter__(self):  # record, table = adbench.run(...)
        return iter((self.record, self.table))


def run(method: str = "patchcore_1pct", dataset: str = "elpv", **overrides: Any) -> RunResult:
    """Run ``method`` on ``dataset`` as ``adbench method=METHOD dataset=DATASET KEY=VALUE ...`` does, and return
    the record and the per-image table (path, label, defect, score, ...). An existing record of the same
    config is returned without rerunning (``force=True`` reruns it)."""
    cfg = compose_config([f"method={method}", f"dataset={dataset}", *overrides_of(overrides)])
    record = run_config(cfg)
    table = read_per_image(record_path(Path(cfg.results_dir), record).parent / record["per_image"])
    return RunResult(record, table, data_base(read_run_data(cfg).split))


@dataclass
class Predictions:
    """``scores`` (N,); ``maps``: per image an (H, W) anomaly map at that image's own size (None for image-level
    methods); ``anomalous`` (N,) bool against the saved threshold (None when the model has none)."""

    scores: np.ndarray
    maps: list[np.ndarray] | None
    anomalous: np.ndarray | None


class Model:
    """A fitted method loaded from a file written by a run with ``save_model=PATH``."""

    def __init__(self, path: str | Path, device: str = "auto"):
        saved = load_saved(path, resolve_device(device))
        self.method, self.threshold, self.meta = saved.method, saved.threshold, saved.meta
        self._transform = saved.transform

    def transform(self, image: ImageLike) -> torch.Tensor:
        """The model's input for one image (path, PIL image, or HxW / HxWx3 array, uint8 or floats in [0, 1])."""
        return self._transform.image(_as_pil(image))

    def predict(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 16) -> Predictions:
        """Image scores and full-resolution anomaly maps of one image or a sequence of them (an ``(N, H, W, 3)``
        array is N images). Each map is computed on the resized, centre-cropped view,
        then placed back into the full resized frame and resized to the image's size. The border the crop removed
        (none when ``crop == resize``) has no score of its own: it repeats the nearest scored pixel."""
        single = isinstance(images, str | Path | Image.Image) or (isinstance(images, np.ndarray) and images.ndim in (2, 3))
        items = [images] if single else list(images)  # a 4-d array is a batch of images
        pictures = [_as_pil(item) for item in items]
        scores, maps = [], []
        for start in range(0, len(pictures), batch_size):
            chunk = pictures[start:start + batch_size]
            out = self.method.predict(torch.stack([self._transform.image(p) for p in chunk]))
            scores.append(out.image_scores)
            if out.maps is not None:
                maps += [self._full_size(m, (p.height, p.width)) for m, p in zip(out.maps, chunk)]
        scores = np.concatenate(scores) if scores else np.zeros(0)
        threshold = self.threshold["image"] if self.threshold else None
        return Predictions(scores, maps or None, None if threshold is None else scores > threshold)

    def _full_size(self, amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """A (crop, crop) map → the image's (H, W): padded back to (resize, resize) as the centre crop took it, resized."""
        resize, crop = self._transform.resize, self._transform.crop
        top = int(round((resize - crop) / 2.0))  # torchvision's center_crop offsets
        framed = np.pad(amap, ((top, resize - crop - top), (top, resize - crop - top)), mode="edge")
        tensor = torch.from_numpy(np.ascontiguousarray(framed, dtype=np.float32))[None, None]
        return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _as_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, str | Path):
        return read_image(Path(image))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array).convert("RGB")


def load_model(path: str | Path, device: str = "auto") -> Model:
    """The model saved at ``path`` (``adbench ... save_model=PATH``), ready to :meth:`Model.predict` images."""
    return Model(path, device)
