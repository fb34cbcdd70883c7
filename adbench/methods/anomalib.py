"""anomalib 2.x models in adbench's harness: ``adbench method=anomalib method.model=Patchcore``.

The model (``anomalib.models.<model>``) runs on adbench's data, resize/crop and normalisation (the
backbone's mean/std), with adbench's backbone weights, and its raw scores and maps go through adbench's
metric suite, per-image table and record like any method's; anomalib's pre-/post-processing, evaluator
and visualizer are switched off. Needs the ``compare`` extra (``pip install -e ".[compare]"``: anomalib==2.7.0).

weights: every timm network the model asks to be pretrained (``timm.create_model(pretrained=True)`` while
       it is built) is made without weights and gets adbench's backbone tensors (``features.backbones``):
       the same weights adbench's own methods use, offline. Networks anomalib builds otherwise (torchvision
       in Cfa, EfficientAd's own teacher) download their weights themselves: offline that is one error line.
fit:   a Lightning ``Trainer`` with the model's ``trainer_arguments`` over adbench's training batches, no
       validation: memory-bank models (Patchcore, Padim, Dfm ...) collect features in one epoch and build
       their bank at its end (``MemoryBankMixin.on_train_epoch_end``); trained ones (Stfpm, Cfa ...) train for
       ``max_epochs`` (default: theirs) without anomalib's Engine callbacks (no checkpoint selection).
score: the torch model in eval mode: ``pred_score`` and ``anomaly_map`` (resized bilinearly to the input
       when the model returns another size).
"""

from __future__ import annotations

import inspect
import logging
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from . import register
from .base import AnomalyDetector, Prediction, nbytes

INSTALL = 'method=anomalib needs anomalib 2.x (the "compare" extra): pip install -e ".[compare]"'
# anomalib's own stages that adbench replaces: its transforms (adbench's), score normalisation and thresholds
# (raw scores into adbench's metrics), its metrics and its images
SWITCHED_OFF = ("pre_processor", "post_processor", "evaluator", "visualizer")


def import_anomalib() -> Any:
    """The anomalib package; ConfigError saying how to install it when it is absent."""
    try:
        with warnings.catch_warnings():  # anomalib's own deprecation notices at import, not the user's concern
            warnings.simplefilter("ignore", FutureWarning)
            import anomalib
            import anomalib.models
    except ImportError as exc:
        raise ConfigError(f"{INSTALL} (import failed: {exc})") from exc
    return anomalib


def model_class(name: str) -> type:
    """``anomalib.models.<name>`` (an AnomalibModule); ConfigError listing the valid names otherwise."""
    from anomalib.models import AnomalibModule, list_models

    cls = getattr(__import__("anomalib.models", fromlist=[name]), name, None)
    if not (isinstance(cls, type) and issubclass(cls, AnomalibModule)):
        raise ConfigError(f"method.model={name!r}: not an anomalib model; valid: {', '.join(sorted(list_models(case='pascal')))}")
    return cls


@contextmanager
def timm_without_downloads() -> Iterator[list[tuple[str, nn.Module]]]:
    """Within the block ``timm.create_model(pretrained=True)`` builds the network without weights and lists
    (name, network), for adbench's weights to be loaded into it."""
    import timm

    requested: list[tuple[str, nn.Module]] = []
    original = timm.create_model

    def create(model_name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        network = original(model_name, pretrained=False, **kwargs)
        if pretrained:
            requested.append((model_name, network))
        return network

    timm.create_model = create
    try:
        yield requested
    finally:
        timm.create_model = original


def load_backbone_weights(network: nn.Module, network_name: str, source: nn.Module, source_name: str) -> None:
    """Copy adbench's backbone tensors into a timm network anomalib built (same architecture, same or fewer stages)."""
    if network_name.split(".")[0] != source_name.split(".")[0]:
        raise ConfigError(f"anomalib builds a pretrained {network_name!r} but adbench's backbone is {source_name!r}: "
                          f"set backbone= to it, or +method.params.backbone={source_name}")
    state, own = source.state_dict(), network.state_dict()
    missing = [key for key in own if key not in state]
    if missing:
        raise ConfigError(f"anomalib's {network_name} uses stages adbench's backbone did not build ({missing[:2]}...): "
                          "set method.layers to the layers the model extracts")
    network.load_state_dict({key: state[key] for key in own})


class _Batches:
    """adbench's batches (dicts) as anomalib ``ImageBatch``es, re-iterable (one pass per epoch)."""

    def __init__(self, batches: Iterable[dict]):
        self.batches = batches

    def __iter__(self) -> Iterator[Any]:
        from anomalib.data import ImageBatch

        for batch in self.batches:
            yield ImageBatch(image=batch["image"])

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


@register("anomalib")
class AnomalibModel(AnomalyDetector):
    """An anomalib 2.x model (``model``, a class of ``anomalib.models``) built with ``params`` as keyword
    arguments, plus ``backbone`` / ``layers`` / ``pre_trained`` from adbench's backbone where the model takes them."""

    param_constraints = {"max_epochs": "[1, inf)"}
    fitted_attributes = ("model",)

    def __init__(self, backbone, layers: list[str], model: str | None = None, params: dict | None = None,
                 max_epochs: int | None = None, device: str = "cpu"):
        super().__init__(backbone, layers, device)
        anomalib = import_anomalib()
        if not model:
            raise ConfigError("method.model: name the anomalib model, e.g. method.model=Patchcore (or Padim, Stfpm, Cfa ...)")
        self.model_name, self.params, self.max_epochs = model, dict(params or {}), max_epochs
        from anomalib.models.components import MemoryBankMixin

        cls = model_class(model)
        accepted = set(inspect.signature(cls.__init__).parameters)
        kwargs = {key: False for key in SWITCHED_OFF if key in accepted}
        lent = {"backbone": backbone.name, "layers": list(layers), "pre_trained": backbone.weights_source != "random"}
        kwargs |= {key: value for key, value in lent.items() if key in accepted} | self.params
        logging.getLogger("anomalib").setLevel(logging.WARNING)  # not "Initializing Patchcore model." on every run
        with timm_without_downloads() as pretrained:
            try:
                self.module = cls(**kwargs)
            except Exception as exc:  # noqa: BLE001 - anomalib's own checks and download failures, reported in one line
                shown = {key: value for key, value in kwargs.items() if key not in SWITCHED_OFF}
                raise ConfigError(f"method.model={model}: anomalib {anomalib.__version__} cannot build it with {shown}: "
                                  f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
        for name, network in pretrained:
            load_backbone_weights(network, name, backbone.model, backbone.name)
        self.model: nn.Module = self.module.model.to(self.device)
        # prefixes of the state entries that are adbench's backbone weights (not fitted: not saved with the model)
        lent_ids = {id(network) for _, network in pretrained}
        self._lent = tuple(f"{name}." for name, m in self.model.named_modules() if id(m) in lent_ids)
        self.version = anomalib.__version__
        self.trained = not isinstance(self.module, MemoryBankMixin)  # memory-bank models only collect features
        self.deviations = (
            f"anomalib {anomalib.__version__} {model}, not adbench's code: its defaults unless method.params sets them",
            "adbench's images, resize/crop and backbone normalisation instead of anomalib's PreProcessor (ImageNet mean/std)",
            "raw model scores and maps into adbench's metrics: anomalib's post-processing (normalisation, thresholds) is off",
            *(("adbench's backbone weights (the same tensors as its own methods) instead of anomalib's timm-hub download",) if pretrained else ()),
            *(("trained by a Lightning Trainer without anomalib's Engine callbacks or validation (last epoch kept)",) if self.trained else ()),
        )

    def _trainer(self, root: str) -> Any:
        from lightning.pytorch import Trainer

        arguments = dict(getattr(self.module, "trainer_arguments", {}) or {})
        if self.max_epochs is not None and self.trained:
            arguments["max_epochs"] = self.max_epochs
        arguments |= {"accelerator": "gpu" if self.device.type == "cuda" else "cpu", "devices": 1, "logger": False,
                      "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
                      "limit_val_batches": 0, "num_sanity_val_steps": 0, "default_root_dir": root}
        return Trainer(**arguments)

    def _fit(self, batches: Iterable[dict]) -> None:
        quiet = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
        levels = [log.level for log in quiet]
        for log in quiet:
            log.setLevel(logging.WARNING)
        try:
            with tempfile.TemporaryDirectory(prefix="adbench-anomalib-") as root, warnings.catch_warnings():
                warnings.filterwarnings("ignore", module="lightning")
                for category in (DeprecationWarning, FutureWarning):  # anomalib's notices about its own API
                    warnings.filterwarnings("ignore", category=category, module="anomalib")
                trainer = self._trainer(root)
                try:
                    trainer.fit(self.module, train_dataloaders=_Batches(batches))
                except Exception as exc:  # noqa: BLE001 - a model that needs anomalib's datamodule or a download
                    raise ConfigError(f"method.model={self.model_name}: anomalib's training failed on adbench's data: "
                                      f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
        finally:
            for log, level in zip(quiet, levels):
                log.setLevel(level)
        self.model = self.module.model.to(self.device).eval()
        epochs = trainer.current_epoch
        self.fit_info = {"anomalib_version": self.version, "anomalib_model": self.model_name, "epochs": int(epochs), "params": self.params,
                         "fitted_tensors": {k: list(v.shape) for k, v in self.fitted_state().items()}}

    @torch.no_grad()
    def _predict(self, images: torch.Tensor) -> Prediction:
        self.model.eval()
        out = self.model(images.to(self.device))
        scores = out.pred_score.reshape(len(images)).double().cpu().numpy()
        if out.anomaly_map is None:
            return Prediction(scores)
        maps = out.anomaly_map.float().reshape(len(images), 1, *out.anomaly_map.shape[-2:])
        if maps.shape[-2:] != images.shape[-2:]:
            maps = F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return Prediction(scores, maps[:, 0].cpu().numpy())

    def fitted_state(self) -> dict[str, torch.Tensor]:
        """The model's state without the backbone weights lent by adbench (restored when it is rebuilt)."""
        return {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items() if not k.startswith(self._lent)}

    def load_fitted_state(self, state: dict[str, torch.Tensor]) -> AnomalibModel:
        """Restore :meth:`fitted_state`; buffers take the saved shapes (a memory bank is empty before fitting)."""
        for key, value in state.items():
            path, _, leaf = key.removeprefix("model.").rpartition(".")
            owner = self.model.get_submodule(path)
            if leaf in owner._buffers:
                owner._buffers[leaf] = value.to(self.device)
            elif leaf in owner._parameters:
                owner._parameters[leaf] = nn.Parameter(value.to(self.device), requires_grad=False)
            else:
                raise KeyError(f"saved state has {key!r}, which anomalib's {self.model_name} does not hold")
        if hasattr(self.module, "_is_fitted"):
            self.module._is_fitted = torch.tensor([True])
        self.is_fitted = True
        return self

    @property
    def memory_bank_shape(self) -> tuple[int, ...]:
        bank = getattr(self.model, "memory_bank", None)
        return tuple(bank.shape) if isinstance(bank, torch.Tensor) and bank.ndim == 2 else ()

    @property
    def memory_bank_bytes(self) -> int:
        return nbytes(*self.fitted_state().values())


__all__ = ["INSTALL", "AnomalibModel", "import_anomalib"]
