"""Check a composed config before any data is read: every value of the run, the dataset and the
method has the right type and range, every output folder is writable. A bad value is one
``ConfigError`` naming the key, the value and what is allowed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..data.degrade import parse_degrade
from ..data.setting_splits import SETTINGS
from ..data.sources import COMMON_DATASET_KEYS, SOURCES, categories
from ..errors import ConfigError, unknown_choice
from ..files import ensure_writable
from ..methods.params import in_interval
from . import group_choices
from .build import check_method_keys, method_params, resolve_device

# key: (type, interval or choices); the run-level keys of conf/config.yaml
RUN_KEYS: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "seed": (int, "[0, inf)"),
    "batch_size": (int, "[1, inf)"),
    "num_workers": (int, "[0, inf)"),
    "figures": (int, "[0, inf)"),
    "force": (bool, None),
    "quiet": (bool, None),
    "results_dir": (str, None),
    "threshold.holdout": ((int, float), "(0, 1)"),
    "threshold.quantile": ((int, float), "(0, 1]"),
}
# the image-size keys every dataset has: (type, range); the other keys of a source are checked against SOURCES
DATASET_SIZE_KEYS: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "resize": (int, "[1, inf)"),
    "crop": (int, "[1, inf)"),
}


def _check(key: str, value: Any, kind: type | tuple[type, ...], rule: Any) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join("number" if k is float else k.__name__ for k in kinds)
        raise ConfigError(f"{key}={value!r}: wrong type; expected {names}")
    if isinstance(rule, str) and not in_interval(float(value), rule):
        raise ConfigError(f"{key}={value!r}: must be in {rule}")
    if isinstance(rule, list) and value not in rule:
        raise ConfigError(f"{key}={value!r}: must be one of {', '.join(rule)}")


def _get(cfg: DictConfig, dotted: str) -> Any:
    return OmegaConf.select(cfg, dotted, throw_on_missing=False)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on the first bad value of ``cfg`` (a composed ``conf/config.yaml``)."""
    missing = missing_keys(cfg)
    if missing:
        hint = " (dataset=folder needs dataset.root=PATH dataset.category=NAME)" if any(k.startswith("dataset.") for k in missing) else ""
        raise ConfigError(f"{', '.join(missing)}: required, no value given{hint}")
    for key, (kind, rule) in RUN_KEYS.items():
        _check(key, _get(cfg, key), kind, rule)
    if cfg.get("fit_memory") is not None:  # bytes of training features held in RAM (null: half the available memory)
        _check("fit_memory", cfg.fit_memory, int, "[1, inf)")
    device = str(cfg.device)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", device):
        raise ConfigError(f"device={device!r}: must be auto, cpu, cuda or cuda:N")
    resolve_device(device)  # cuda without CUDA: refused before any data is read
    _validate_dataset(cfg.dataset, multi_class=_validate_setting(cfg))
    params = method_params(cfg.method)
    if cfg.method.get("labelled_anomalies") is not None:
        _check("method.labelled_anomalies", cfg.method.labelled_anomalies, int, "[0, inf)")
    check_method_keys(str(cfg.method.name), params)
    _validate_outputs(cfg)


def missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Dotted names of the mandatory values (``???``) left unset."""
    out = []
    for key in cfg.keys():
        if key == "hydra":
            continue
        dotted = f"{prefix}{key}"
        if OmegaConf.is_missing(cfg, key):
            out.append(dotted)
        elif isinstance(cfg[key], DictConfig):
            out += missing_keys(cfg[key], dotted + ".")
    return out


def _validate_dataset(d: DictConfig, multi_class: bool = False) -> None:
    name = str(d.name)
    if name not in SOURCES:
        raise unknown_choice("dataset.name", name, list(SOURCES))
    allowed = COMMON_DATASET_KEYS | set(SOURCES[name])
    unknown = sorted(set(d.keys()) - allowed)
    if unknown:
        raise ConfigError(f"dataset={d.get('label', name)}: unknown key(s) {', '.join('dataset.' + k for k in unknown)}; valid: {', '.join(sorted(allowed))}")
    for key, (kind, rule) in DATASET_SIZE_KEYS.items():
        _check(f"dataset.{key}", d[key], kind, rule)
    for key, (kind, rule) in SOURCES[name].items():
        if key in d:
            _check(f"dataset.{key}", d[key], kind, rule)
    if d.crop > d.resize:
        raise ConfigError(f"dataset.crop={d.crop}: must be <= dataset.resize={d.resize} (images are resized, then centre-cropped)")
    listed = isinstance(d.category, ListConfig)
    if listed and not multi_class:
        raise ConfigError(f"dataset.category={list(d.category)}: a list of categories needs setting=multi_class")
    chosen = [str(c) for c in d.category] if listed else [str(d.category)]
    options = categories(name)
    for category in chosen:
        if options is not None and category not in options and not (multi_class and category == "all"):
            raise unknown_choice("dataset.category", category, options)
    if d.get("root") is not None and not isinstance(d.root, str):
        raise ConfigError(f"dataset.root={d.root!r}: wrong type; expected a path")
    if d.get("degrade"):
        parse_degrade(d.degrade)


def _validate_setting(cfg: DictConfig) -> bool:
    """Check ``setting.*`` (conf/setting/): its name, its keys, their types and ranges; True for multi-class."""
    setting = cfg.get("setting")
    if setting is None:
        return False
    name = str(setting.get("name"))
    if name not in SETTINGS:
        raise unknown_choice("setting.name", name, list(SETTINGS))
    allowed = {"name"} | set(SETTINGS[name])
    unknown = sorted(set(setting.keys()) - allowed)
    if unknown:
        raise ConfigError(f"setting={name}: unknown key(s) {', '.join('setting.' + k for k in unknown)}; valid: {', '.join(sorted(allowed))}")
    for key, (kind, rule) in SETTINGS[name].items():
        if key not in setting:
            raise ConfigError(f"setting.{key}: required with setting={name}")
        value = setting[key]
        _check(f"setting.{key}", list(value) if isinstance(value, ListConfig) else value, kind, rule)
    for i, entry in enumerate(setting.get("categories") or []):
        preset = str(entry).partition("/")[0]
        if preset not in group_choices("dataset"):
            raise unknown_choice(f"setting.categories[{i}] dataset", preset, group_choices("dataset"))
    return name == "multi_class"


def _validate_outputs(cfg: DictConfig) -> None:
    ensure_writable([cfg.results_dir], "results_dir")
    if cfg.get("cache_dir"):
        ensure_writable([cfg.cache_dir], "cache_dir")
    if cfg.get("save_model"):
        path = Path(str(cfg.save_model))
        if path.is_dir():
            raise ConfigError(f"save_model={path}: is a folder; give a file path such as models/bottle.safetensors")
        ensure_writable([path.parent], "save_model")
