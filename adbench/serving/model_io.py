"""Save and load a fitted method: one safetensors file, never a pickle.

Layout of ``model.safetensors``:

* tensors: the method's ``fitted_state()`` (memory bank, Gaussians, descriptor weights, ...); the
  backbone's own weights only when they cannot be rebuilt from a named source (``pretrained=false``);
* header metadata ``adbench``: a JSON document with the method config, backbone (name, layers,
  weights source and the SHA-256 of its weights), transform, decision threshold, library versions;
* header metadata ``sha256``: digest of that JSON and of every tensor (name, dtype, shape, bytes).

Loading parses only JSON and raw tensor bytes, so a file cannot run code. It rebuilds the backbone
and the method from the JSON (the method through the plugin registry, its keys checked like a run's),
verifies the digest and the backbone's weights, then restores the fitted tensors. Any corrupt,
truncated, edited or foreign file fails with a ``ModelFileError`` naming the file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..config.build import build_method
from ..data.transforms import Transform
from ..errors import AdbenchError, reraise_as
from ..features.backbones import Backbone
from ..features.cache import CachedBackbone
from ..files import atomic_write, content_digest
from ..methods import AnomalyDetector
from ..results.records import library_versions

FORMAT = "adbench-model"
FORMAT_VERSION = 1
BACKBONE_PREFIX = "__backbone__."
BACKBONE_KEYS = ("name", "pretrained", "weights", "layers", "weights_source", "weights_stored", "sha256")


class ModelFileError(AdbenchError):
    """A saved model file is missing, corrupt, modified or inconsistent with this installation."""


@dataclass
class SavedModel:
    """A loaded model: the fitted method, the transform its inputs need, threshold and metadata."""

    method: AnomalyDetector
    transform: Transform
    threshold: dict[str, Any] | None
    meta: dict[str, Any]


def backbone_digest(backbone: Backbone) -> str:
    """SHA-256 of the backbone's weights and buffers: proves a reload rebuilt the same network."""
    return content_digest(backbone.state_dict())


def plain_backbone(method: AnomalyDetector) -> Backbone:
    """The method's ``Backbone``, unwrapped from a feature cache if the run used one."""
    backbone = method.backbone
    return backbone.inner if isinstance(backbone, CachedBackbone) else backbone


def save_model(
    path: str | Path,
    method: AnomalyDetector,
    method_config: dict[str, Any],
    backbone_config: dict[str, Any],
    transform: Transform,
    threshold: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write ``method`` (fitted) to ``path`` atomically.

    ``method_config``: ``name`` plus the constructor keys (as in ``conf/method``); ``backbone_config``:
    ``name``, ``pretrained``, ``weights`` (as in ``conf/backbone``); ``info``: free JSON (dataset, run).
    """
    path = Path(path)
    tensors = method.fitted_state()
    if not tensors:
        raise ModelFileError(f"{method.name}: nothing fitted to save (fit the method first, and set its fitted_attributes)")
    backbone = plain_backbone(method)
    rebuildable = backbone.weights_source != "random"
    if not rebuildable:  # random weights cannot be recreated by name: store them
        tensors.update({BACKBONE_PREFIX + k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": dict(method_config),
        "backbone": {
            "name": backbone_config["name"],
            "pretrained": bool(backbone_config.get("pretrained", True)),
            "weights": backbone_config.get("weights"),
            "layers": list(backbone.layers),
            "weights_source": backbone.weights_source,
            "weights_stored": not rebuildable,
            "sha256": backbone_digest(backbone),
        },
        "backbone_config": dict(backbone_config),  # ensemble members that name no backbone resolve against it
        "transform": {"resize": transform.resize, "crop": transform.crop, "mean": list(transform.mean), "std": list(transform.std)},
        "threshold": threshold,
        "fit_info": method.fit_info,
        "memory_bank": {"shape": list(method.memory_bank_shape), "bytes": int(method.memory_bank_bytes)},
        "info": info or {},
        "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    meta_json = json.dumps(meta, sort_keys=True, default=str)
    metadata = {"adbench": meta_json, "sha256": content_digest(tensors, meta_json.encode())}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The verified metadata and tensors of a model file."""
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    with reraise_as(ModelFileError, f"cannot read model file {path}: not a valid safetensors file", SafetensorError, OSError, ValueError, RuntimeError):
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    if "adbench" not in header or "sha256" not in header:
        raise ModelFileError(f"model file {path} holds no adbench metadata: it was not written by adbench.model_io.save_model")
    if content_digest(tensors, header["adbench"].encode()) != header["sha256"]:
        raise ModelFileError(f"model file {path} fails its SHA-256 check: it was modified or corrupted after saving")
    with reraise_as(ModelFileError, f"model file {path}: metadata is not valid JSON", json.JSONDecodeError):
        meta = json.loads(header["adbench"])
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"model file {path} is not an {FORMAT} file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"model file {path} has format version {meta.get('format_version')}; this adbench reads version {FORMAT_VERSION}")
    missing = [key for key in ("method", "backbone", "transform") if not isinstance(meta.get(key), dict)]
    missing += [f"backbone.{key}" for key in BACKBONE_KEYS if key not in meta.get("backbone", {})]
    if missing:
        raise ModelFileError(f"model file {path}: metadata lacks {', '.join(missing)}")
    return meta, tensors


def read_model_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a model file (after the integrity check), without building the model."""
    return _read(Path(path))[0]


def load_model(path: str | Path, device: str | torch.device = "cpu") -> SavedModel:
    """Rebuild the backbone and method saved by ``save_model`` and restore its fitted state."""
    path = Path(path)
    meta, tensors = _read(path)
    b = meta["backbone"]
    if b["name"] not in timm.list_models():  # registry names only: no hub or file references
        raise ModelFileError(f"model file {path}: backbone {b['name']!r} is not a timm model name")
    backbone = Backbone(b["name"], b["layers"], pretrained=b["pretrained"], weights=b["weights"])
    stored = {k[len(BACKBONE_PREFIX):]: tensors.pop(k) for k in list(tensors) if k.startswith(BACKBONE_PREFIX)}
    if b["weights_stored"]:
        with reraise_as(ModelFileError, f"model file {path}: stored backbone weights do not fit {b['name']}", RuntimeError):
            backbone.load_state_dict(stored)
    method = build_method(OmegaConf.create(meta["method"]), backbone, torch.device(device), meta.get("backbone_config"))
    with reraise_as(ModelFileError, f"model file {path}: fitted state does not match method {meta['method']['name']}", KeyError, RuntimeError, ValueError):
        method.load_fitted_state(tensors)
    # after the fitted state: a method that fine-tunes its backbone restores those weights above
    if backbone_digest(backbone) != b["sha256"]:
        raise ModelFileError(
            f"model file {path}: the backbone {b['name']} rebuilt from {backbone.weights_source} differs from the one "
            f"the model was fitted with ({b['weights_source']}); scores would be meaningless"
        )
    unexpected = sorted(set(tensors) - set(method.fitted_state()))
    if unexpected:
        raise ModelFileError(f"model file {path}: tensors {unexpected} are not fitted attributes of {meta['method']['name']}")
    method.fit_info = dict(meta.get("fit_info") or {})
    t = meta["transform"]
    transform = Transform(t["resize"], t["crop"], tuple(t["mean"]), tuple(t["std"]))
    return SavedModel(method, transform, meta.get("threshold"), meta)
