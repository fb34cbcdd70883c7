"""Config → objects: the device, the backbone and the method (with an ensemble's members).

The runner and the saved-model loader both build through here, so a method is constructed the same
way whether it is fitted now or restored from a file.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError, reraise_as
from ..features.backbones import Backbone
from ..methods import AnomalyDetector, method_class
from ..methods.params import check_params
from . import load_group


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available; use device=cpu or device=auto")
    return torch.device(name)


def build_backbone(cfg: DictConfig | dict, layers: list[str]) -> Backbone:
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    return Backbone(cfg.name, layers, pretrained=cfg.get("pretrained", True), weights=cfg.get("weights"))


RUNNER_KEYS = ("name", "labelled_anomalies")  # method.* keys the runner consumes (a data split), not the constructor


def method_params(method_cfg: DictConfig | dict) -> dict[str, Any]:
    params = OmegaConf.to_container(method_cfg, resolve=True) if isinstance(method_cfg, DictConfig) else dict(method_cfg)
    for key in RUNNER_KEYS:
        params.pop(key, None)
    return params


def constructor_keys(cls: type[AnomalyDetector]) -> set[str]:
    """The ``method.*`` keys a method class accepts (its constructor's hyper-parameters)."""
    return set(inspect.signature(cls.__init__).parameters) - {"self", "backbone", "device"}


def check_method_keys(name: str, params: dict[str, Any], prefix: str = "method") -> None:
    """ConfigError naming every key the method's constructor does not take, or a value of the wrong type or range."""
    cls = method_class(name)
    accepted = constructor_keys(cls)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(f"method={name}: unknown key(s) {', '.join(f'{prefix}.{k}' for k in unknown)}; valid: {', '.join(sorted(accepted))}")
    check_params(cls, params, prefix)


def build_method(method_cfg: DictConfig | dict, backbone: Backbone, device: torch.device, backbone_cfg: DictConfig | dict | None = None) -> AnomalyDetector:
    """Instantiate ``method.name`` with the other ``method.*`` keys as constructor arguments.

    A method that declares ``member_key`` (an ensemble) gets its members built here from their specs;
    a member that names no backbone uses ``backbone_cfg`` (the run's).
    """
    cfg = OmegaConf.create(method_cfg) if isinstance(method_cfg, dict) else method_cfg
    cls = method_class(cfg.name)
    params = method_params(cfg)
    check_method_keys(cfg.name, params)
    if cls.member_key is not None:
        params[cls.member_key] = [
            _build_member(spec, index, cls.member_key, backbone, device, backbone_cfg, params.get("seed", 0))
            for index, spec in enumerate(params.get(cls.member_key) or [])
        ]
    return cls(backbone=backbone, device=device, **params)


def _build_member(spec: Any, index: int, member_key: str, run_backbone: Backbone, device: torch.device,
                  run_backbone_cfg: DictConfig | dict | None, seed: int) -> AnomalyDetector:
    """One member ``{method: NAME, backbone: NAME | {config}, KEY: VALUE ...}``: ``conf/method/NAME.yaml``
    with the overrides, ``${backbone.*}`` / ``${seed}`` resolved against the member's backbone and ``seed``.
    A member on the run's backbone whose layers that backbone extracts shares it."""
    key = f"method.{member_key}[{index}]"
    if not isinstance(spec, dict) or "method" not in spec:
        raise ConfigError(f"{key} must be a mapping with a 'method' key, e.g. {{method: patchcore, backbone: efficientnet_lite1}}; got {spec!r}")
    overrides = dict(spec)
    name, backbone = overrides.pop("method"), overrides.pop("backbone", None)
    defaults = load_group("method", name, f"{key}.method")
    if method_class(name).member_key is not None:
        raise ConfigError(f"{key}: an ensemble cannot be a member of an ensemble")
    run_cfg = None if run_backbone_cfg is None else OmegaConf.create(
        OmegaConf.to_container(run_backbone_cfg, resolve=True) if isinstance(run_backbone_cfg, DictConfig) else dict(run_backbone_cfg))
    if backbone is None:
        if run_cfg is None:
            raise ConfigError(f"{key} names no backbone and the run has none to lend")
        backbone_cfg = run_cfg
    elif isinstance(backbone, str):
        backbone_cfg = load_group("backbone", backbone, f"{key}.backbone")
    else:
        backbone_cfg = OmegaConf.create(dict(backbone))
    root = OmegaConf.create({"backbone": backbone_cfg, "seed": seed, "method": OmegaConf.merge(defaults, overrides)})
    with reraise_as(ConfigError, f"{key}: cannot resolve its config"):
        OmegaConf.resolve(root)
    params = method_params(root.method)
    check_method_keys(name, params, key)
    shared = run_cfg is not None and _network(root.backbone) == _network(run_cfg) and set(root.method.layers) <= set(run_backbone.layers)
    member_backbone = run_backbone if shared else build_backbone(root.backbone, list(root.method.layers))
    return method_class(name)(backbone=member_backbone, device=device, **params)


def _network(cfg: DictConfig) -> tuple:
    """What makes two backbone configs the same network: name, pretrained, weights file."""
    return cfg.name, cfg.get("pretrained", True), cfg.get("weights")
