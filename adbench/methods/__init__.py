"""Method plugins: one module per method, each registering its class with ``@register``.

A method module ``adbench/methods/<name>.py`` is imported on first use, so adding a method is
adding a file (and ``conf/method/<name>.yaml``).
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import unknown_choice
from .base import AnomalyDetector, NotFittedError, Prediction

_REGISTRY: dict[str, type[AnomalyDetector]] = {}
_NOT_METHODS = {"base", "cost", "params", "scoring", "training"}  # helpers, not methods


def register(name: str):
    """Class decorator registering a detector under ``name`` (the ``method.name`` config value)."""

    def decorate(cls: type[AnomalyDetector]) -> type[AnomalyDetector]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_methods() -> list[str]:
    """Names of every method module in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_METHODS and not m.name.startswith("_"))


def method_class(name: str) -> type[AnomalyDetector]:
    """The detector class registered as ``name``; ConfigError listing valid names otherwise."""
    if name not in _REGISTRY:
        if name not in available_methods():
            raise unknown_choice("method", name, available_methods())
        importlib.import_module(f"{__name__}.{name}")
    return _REGISTRY[name]


__all__ = ["AnomalyDetector", "NotFittedError", "Prediction", "available_methods", "method_class", "register"]
