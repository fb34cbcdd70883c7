"""The small API every method implements: ``fit(batches)``, ``predict(images)``, memory-bank size."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import AdbenchError, ConfigError
from ..features.backbones import Backbone


class NotFittedError(AdbenchError, RuntimeError):
    """``predict`` (or saving) before ``fit``."""


def nbytes(*tensors: torch.Tensor | None) -> int:
    """Bytes the tensors hold (None counts 0): how methods count their memory bank."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA kernels run asynchronously), e.g. before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Prediction:
    """``image_scores`` (B,); ``maps`` (B, H, W) at input resolution, None for image-level methods."""

    image_scores: np.ndarray
    maps: np.ndarray | None = None


class AnomalyDetector(ABC):
    """Base class: hyper-parameters in the constructor, a frozen ``Backbone`` shared by the pipeline.

    ``fit`` takes an iterable of batches (dicts with an ``image`` tensor (B, 3, H, W), as the
    data loader yields them); ``predict`` takes normalised images and returns a Prediction and
    refuses to run before ``fit``. Subclasses implement ``_fit`` and ``_predict``.

    What a method needs from the pipeline, declared as class attributes the runner reads:
    ``pixel_level`` (it produces anomaly maps), ``learns_from_anomalies`` (it trains on labelled
    anomalous images with masks when given some), ``member_key`` (the constructor argument that
    takes other detectors, built by the config layer: ensembles).
    """

    name: ClassVar[str] = "base"
    pixel_level: ClassVar[bool] = True
    learns_from_anomalies: ClassVar[bool] = False
    member_key: ClassVar[str | None] = None
    # deliberate differences from the paper, one short line each with its reason (recorded with every run; the
    # paper is the reference, so official-code choices the paper does not make are listed too). A method whose
    # settings change the list sets its own in ``__init__``.
    deviations: tuple[str, ...] = ()
    # ranges / choices of constructor arguments, checked before any data is read (see params.py)
    param_constraints: ClassVar[dict[str, Any]] = {}

    def __init__(self, backbone: Backbone, layers: list[str], device: str | torch.device = "cpu"):
        missing = [layer for layer in layers if layer not in backbone.layers]
        if missing:
            raise ConfigError(f"{type(self).__name__}: layers {missing} not extracted by backbone (has {backbone.layers})")
        self.backbone, self.layers, self.device = backbone, list(layers), torch.device(device)
        self.backbone.to(self.device)
        self.fit_info: dict[str, Any] = {}
        self.is_fitted = False
        self.memory_budget: int | None = None  # set by ``fit``
        # False: predict may skip its anomaly maps (the runner sets it for data without masks)
        self.compute_maps = True

    def layer_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's maps for ``self.layers``, finest first."""
        maps = self.backbone(images.to(self.device, non_blocking=True))
        return [maps[layer] for layer in self.layers]

    def images(self, batches: Iterable[dict], desc: str) -> Iterator[torch.Tensor]:
        """Iterate the batches' images with a progress bar."""
        for batch in tqdm(batches, desc=f"{self.name}: {desc}", leave=False):
            yield batch["image"]

    def fit(self, batches: Iterable[dict], memory_budget: int | None = None) -> AnomalyDetector:
        """Learn the model of normality from normal training images. ``memory_budget``: bytes of training
        features a method that gathers them (a ``FeatureStore``: PatchCore, SPADE, ReConPatch) holds in RAM
        before it moves them to a temporary file (the run's ``fit_memory``; None: half the available memory)."""
        self.memory_budget = memory_budget
        self._fit(batches)
        self.is_fitted = True
        return self

    def predict(self, images: torch.Tensor) -> Prediction:
        """Score a batch of normalised images."""
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__}.predict called before fit (or load_fitted_state)")
        return self._predict(images)

    @abstractmethod
    def _fit(self, batches: Iterable[dict]) -> None:
        """Fit the method's state (called by ``fit``)."""

    @abstractmethod
    def _predict(self, images: torch.Tensor) -> Prediction:
        """Image scores and maps of a fitted method (called by ``predict``)."""

    # --- fitted state (save / load): names of attributes holding tensors or nn.Modules -------------
    fitted_attributes: ClassVar[tuple[str, ...]] = ()

    def fitted_state(self) -> dict[str, torch.Tensor]:
        """Everything fitted, as named CPU tensors (saved with safetensors, never pickled)."""
        state: dict[str, torch.Tensor] = {}
        for attr in self.fitted_attributes:
            value = getattr(self, attr)
            if isinstance(value, torch.nn.Module):
                state.update({f"{attr}.{k}": v.detach().cpu().contiguous() for k, v in value.state_dict().items()})
            elif isinstance(value, torch.Tensor):
                state[attr] = value.detach().cpu().contiguous()
            elif value is not None:
                raise TypeError(f"{type(self).__name__}.{attr} is neither a tensor nor a module")
        return state

    def load_fitted_state(self, state: dict[str, torch.Tensor]) -> AnomalyDetector:
        """Restore what ``fitted_state`` returned, then rebuild derived objects (``_after_load``)."""
        for attr in self.fitted_attributes:
            value = getattr(self, attr)
            if isinstance(value, torch.nn.Module):
                prefix = f"{attr}."
                value.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
                value.to(self.device)
            else:
                if attr not in state:
                    raise KeyError(f"saved state lacks {attr!r}")
                setattr(self, attr, state[attr].to(self.device))
        self._after_load()
        self.is_fitted = True
        return self

    def _after_load(self) -> None:
        """Rebuild indices or caches from the loaded state (override when needed)."""

    @property
    def memory_bank_shape(self) -> tuple[int, ...]:
        """Shape of what the method keeps from training data (vectors x dims, or its tensor shape)."""
        return ()

    @property
    @abstractmethod
    def memory_bank_bytes(self) -> int:
        """Bytes of everything fitted from training data that scoring needs (bank, Gaussians, weights)."""
