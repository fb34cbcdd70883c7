"""The one predict loop, shared by the runner, threshold calibration and ``adbench-predict``:
batches → image scores (+ maps), with finite checks, model-only timing and a progress bar."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import AdbenchError
from ..features.memory import recycle_freed_memory
from ..scores import Scored
from .base import AnomalyDetector, Prediction, synchronize


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


def check_finite_prediction(method: AnomalyDetector, prediction: Prediction, paths: list[str]) -> None:
    """Raise naming the images whose image score or anomaly map holds NaN or inf."""
    bad = ~np.isfinite(prediction.image_scores)
    if prediction.maps is not None:
        bad |= ~np.isfinite(prediction.maps.reshape(len(prediction.maps), -1)).all(1)
    if bad.any():
        names = [paths[i] for i in np.flatnonzero(bad)]
        raise NonFiniteError(f"method {method.name} produced NaN or inf scores for {len(names)} image(s), e.g. {names[:3]}")


def score_batches(
    method: AnomalyDetector,
    batches: Iterable[dict],
    desc: str = "scoring",
    keep_maps: bool = True,
    on_batch: Callable[[dict, Prediction], None] | None = None,
) -> Scored:
    """Predict every batch (dicts with ``image``, ``path`` and optionally ``label``, ``mask``).

    ``keep_maps=False`` drops maps after ``on_batch`` has seen them (constant memory for large folders).
    """
    recycle_freed_memory()  # each batch's temporaries reuse the last one's memory instead of faulting it in anew
    out = Scored()
    labels, scores, masks, maps = [], [], [], []
    total = len(batches) if hasattr(batches, "__len__") else None
    start = time.perf_counter()
    with torch.no_grad():
        for batch in tqdm(batches, desc=f"{method.name}: {desc}", total=total, leave=False, unit="batch"):
            synchronize(method.device)
            t0 = time.perf_counter()
            prediction = method.predict(batch["image"])
            synchronize(method.device)
            out.model_seconds += time.perf_counter() - t0
            paths = list(batch["path"])
            check_finite_prediction(method, prediction, paths)
            out.paths += paths
            scores.append(prediction.image_scores)
            if "label" in batch:
                labels.append(np.asarray(batch["label"]))
            if "mask" in batch:
                masks.append(batch["mask"].numpy().astype(bool))
            if keep_maps and prediction.maps is not None:
                maps.append(prediction.maps)
            if on_batch is not None:
                on_batch(batch, prediction)
    out.total_seconds = time.perf_counter() - start
    out.scores = np.concatenate(scores) if scores else np.zeros(0)
    out.labels = np.concatenate(labels) if labels else None
    out.masks = np.concatenate(masks) if masks else None
    out.maps = np.concatenate(maps) if maps else None
    return out
