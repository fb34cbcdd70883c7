"""Hyper-parameter checks, declared by each method next to its constructor:
``param_constraints = {"coreset_ratio": "(0, 1]", "nn_backend": ["auto", "faiss", "torch"]}``.

Types come from the constructor's annotations, ranges (``"[1, inf)"``) and choices from
``param_constraints``; a bad value is one ``ConfigError`` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from ..errors import ConfigError

_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "dict": dict}
_SEQUENCES = ("list", "tuple", "Sequence")


def _matches(value: Any, annotation: str) -> bool:
    """Does ``value`` fit the annotation string (``int``, ``float | None``, ``list[str]`` ...)?"""
    for part in (p.strip() for p in annotation.split("|")):
        if part == "None" and value is None:
            return True
        if part.startswith(_SEQUENCES) and isinstance(value, (list, tuple)):
            return True
        kind = _TYPES.get(part)
        if kind is None and part not in ("None",) and not part.startswith(_SEQUENCES):
            return True  # an annotation this check does not know (torch.device, Any ...): accepted
        if kind is bool and isinstance(value, bool):
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if kind in (str, dict) and isinstance(value, kind):
            return True
    return False


def in_interval(value: float, interval: str) -> bool:
    """``value`` in an interval written as ``"(0, 1]"``, ``"[1, inf)"``."""
    low, high = (x.strip() for x in interval[1:-1].split(","))
    lo, hi = float(low), (math.inf if high == "inf" else float(high))
    return (lo < value if interval[0] == "(" else lo <= value) and (value < hi if interval[-1] == ")" else value <= hi)


def check_params(cls: type, params: dict[str, Any], prefix: str = "method") -> None:
    """Types (from ``cls.__init__``'s annotations) and ``cls.param_constraints`` of ``params``."""
    signature = inspect.signature(cls.__init__)
    constraints: dict[str, Any] = getattr(cls, "param_constraints", {})
    for key, value in params.items():
        parameter = signature.parameters.get(key)
        annotation = parameter.annotation if parameter is not None else inspect.Parameter.empty
        if isinstance(annotation, str) and not _matches(value, annotation):
            raise ConfigError(f"{prefix}.{key}={value!r}: wrong type; expected {annotation}")
        rule = constraints.get(key)
        if rule is None or value is None:
            continue
        if isinstance(rule, list):
            if value not in rule:
                raise ConfigError(f"{prefix}.{key}={value!r}: must be one of {', '.join(map(str, rule))}")
        elif isinstance(value, (int, float)) and not in_interval(float(value), rule):
            raise ConfigError(f"{prefix}.{key}={value!r}: must be in {rule}")
