"""Leaderboard row names: a run is named by its method and what its config changes.

``patchcore [coreset_ratio=0.2]``: the method, then every method key whose value differs from
``conf/method/<name>.yaml`` resolved against the run's own config (so ``${backbone.patch_layers}``
and ``${seed}`` take the run's values), then the benchmark setting when not ``full`` (e.g.
``few-shot K=4 draw 0``), the run's tag, test-set degradation, threshold hold-out, and ``≠paper``
when the method declares deviations from its paper. Seeds never name a row (they aggregate into it).
Where two distinct configurations would still share a name in one table cell, :func:`distinct_names`
appends the config keys that tell them apart (e.g. ``device=cuda``).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .records import LOCATION_KEYS, NON_SEMANTIC_KEYS, seedless

_UNKNOWN = object()  # a default that cannot be resolved for this run: never reported as a difference
DEVIATES = "≠paper"  # the method declares deviations from its paper (record ``deviations``, listed under the section)


@cache
def _method_yaml(name: str) -> DictConfig | None:
    path = resources.files("adbench.conf").joinpath("method", f"{name}.yaml")
    return OmegaConf.load(str(path)) if path.is_file() else None


def method_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The run's method's YAML defaults, interpolations resolved against the run's config; keys that
    cannot be resolved (e.g. a hand-made record without ``backbone``) map to an unknown marker."""
    yaml = _method_yaml(str(config.get("method", {}).get("name")))
    if yaml is None:
        return {}
    merged = OmegaConf.create({**{k: v for k, v in config.items() if k != "method"}, "method": yaml})
    out: dict[str, Any] = {}
    for key in yaml:
        try:
            value = merged.method[key]
            out[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
        except OmegaConfBaseException:
            out[key] = _UNKNOWN
    return out


LONG = 40  # characters: a longer value is shown as "…" and a short digest of it


def fmt(value: Any) -> str:
    """A config value as it reads in a row name: yaml-like, compact; a long one elided to a digest."""
    text = _text(value)
    return text if len(text) <= LONG else "…" + hashlib.sha256(text.encode()).hexdigest()[:6]


def _text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def legacy_params(name: Any) -> dict[str, Any]:
    """What a record written before a method key existed ran with (the method's ``legacy_params``, e.g.
    PatchCore's ``reduce_rank: false``); {} for a method that declares none or is not installed."""
    from ..methods import method_class

    try:
        return dict(getattr(method_class(str(name)), "legacy_params", {}))
    except Exception:  # noqa: BLE001 - an unknown or broken plugin only loses this refinement of the name
        return {}


def method_differences(config: dict[str, Any]) -> list[str]:
    """``key=value`` for every method key (seed and name aside) that differs from the method's defaults;
    a key the record lacks counts with its legacy value, when the method declares one."""
    defaults = method_defaults(config)  # keys the YAML does not hold (or cannot resolve) are not compared
    method = config.get("method", {})
    method = {**legacy_params(method.get("name")), **method} if defaults else method
    return [f"{key}={fmt(value)}" for key, value in method.items()
            if key not in ("name", "seed") and defaults.get(key, _UNKNOWN) is not _UNKNOWN and value != defaults[key]]


def setting_label(record: dict[str, Any]) -> str | None:
    """How a benchmark setting other than ``full`` reads in a row name (the record's label, else its config keys)."""
    setting = record.get("setting") or record.get("config", {}).get("setting") or {}
    if not isinstance(setting, dict) or setting.get("name", "full") == "full":
        return None
    keys = [f"{k}={fmt(v)}" for k, v in setting.items() if k not in ("name", "label")]
    return setting.get("label") or " ".join([setting["name"], *keys])


def run_name(record: dict[str, Any]) -> str:
    """``method [differences; tag; degradation; threshold hold-out; deviations]``."""
    config = record.get("config", {})
    parts = method_differences(config)
    parts += [str(p) for p in (setting_label(record), config.get("tag"), record.get("degrade")) if p and str(p) not in parts]
    if record.get("saved_model"):
        parts.append(f"threshold hold-out {fmt(config.get('threshold', {}).get('holdout'))}")  # held out of the fit
    if record.get("deviations"):
        parts.append(DEVIATES)
    return record["method"] + (f" [{'; '.join(parts)}]" if parts else "")


def flat_config(config: dict[str, Any]) -> dict[str, str]:
    """Dotted key → value (as text) of the result-relevant config without seeds: what tells two configurations apart."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = json.dumps(node, sort_keys=True, default=str)

    relevant = {k: v for k, v in seedless(config).items() if k not in NON_SEMANTIC_KEYS}
    if isinstance(relevant.get("dataset"), dict):
        relevant["dataset"] = {k: v for k, v in relevant["dataset"].items() if k not in LOCATION_KEYS}
    walk(relevant, "")
    return out


def _label(key: str, text: str) -> str:
    value = json.loads(text)
    if key == "dataset.digest":
        return f"data={str(value)[:8]}"
    return f"{key.removeprefix('method.')}={fmt(value)}"


def distinct_names(runs: Iterable[tuple[str, Any, str, dict[str, Any]]]) -> dict[str, str]:
    """Names that tell every configuration apart: ``runs`` are (name, cell, replicate key, config), a
    cell being one leaderboard cell (section and category). Where a name covers two replicate keys in
    one cell, the config keys that differ there are appended to every run of that name.

    Returns replicate key → final name."""
    runs = list(runs)
    configs_in_cell: dict[tuple[str, Any], dict[str, dict[str, str]]] = defaultdict(dict)
    for name, cell, key, config in runs:
        configs_in_cell[(name, cell)].setdefault(key, flat_config(config))
    telling: dict[str, set[str]] = defaultdict(set)
    for (name, _), configs in configs_in_cell.items():
        if len(configs) > 1:
            flats = list(configs.values())
            keys = set().union(*flats)
            telling[name] |= {k for k in keys if len({f.get(k) for f in flats}) > 1}
    names = {}
    for name, cell, key, _ in runs:
        flat = configs_in_cell[(name, cell)][key]
        extra = [_label(k, flat[k]) for k in sorted(telling.get(name, ())) if k in flat]
        if not extra:
            names[key] = name
        elif name.endswith("]"):
            names[key] = f"{name[:-1]}; {'; '.join(extra)}]"
        else:
            names[key] = f"{name} [{'; '.join(extra)}]"
    return names
