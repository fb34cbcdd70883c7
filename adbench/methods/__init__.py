"""Method plugins: one module per method, each registering its class with ``@register``.

A method module ``adbench/methods/<name>.py`` is imported on first use, so adding a method is
adding a file (and ``conf/method/<name>.yaml``). Installed packages add methods without touching
this tree: an entry point ``NAME = "module:Class"`` in the group ``adbench.methods`` (a subclass of
:class:`AnomalyDetector`), loaded on first use like a built-in (see examples/plugin/).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from importlib.metadata import EntryPoint

from ..errors import ConfigError, unknown_choice
from ..plugins import METHODS_GROUP, declared, package_of
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


def plugin_methods() -> dict[str, EntryPoint]:
    """Methods of installed packages (entry point group ``adbench.methods``) by name, read from their
    metadata without importing them; a name a built-in method has is left to the built-in."""
    built_in = set(available_methods())
    return {name: entry for name, entry in declared(METHODS_GROUP).items() if name not in built_in}


def load_plugin(name: str, entry: EntryPoint) -> type[AnomalyDetector]:
    """Import a plugin's class and check it is a usable detector; one-line ConfigError naming the package otherwise."""
    where = f"method plugin {name!r} (package {package_of(entry)}, entry point {entry.value})"
    try:
        cls = entry.load()
    except Exception as exc:  # noqa: BLE001 - any error of foreign code: reported in one line, the built-ins unaffected
        raise ConfigError(f"{where}: cannot be loaded: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not (isinstance(cls, type) and issubclass(cls, AnomalyDetector)):
        lacking = [m for m in ("fit", "predict") if not callable(getattr(cls, m, None))]
        detail = f"lacks {' and '.join(lacking)}" if lacking else f"is {cls!r}"
        raise ConfigError(f"{where}: {detail}; it must be a subclass of adbench.methods.AnomalyDetector")
    if inspect.isabstract(cls):
        raise ConfigError(f"{where}: does not implement {', '.join(sorted(cls.__abstractmethods__))}")
    cls.name = name
    return cls


def method_class(name: str) -> type[AnomalyDetector]:
    """The detector class registered as ``name`` (built-in or plugin); ConfigError listing valid names otherwise."""
    if name not in _REGISTRY:
        plugins = plugin_methods()
        if name in plugins:
            _REGISTRY[name] = load_plugin(name, plugins[name])
        elif name in available_methods():
            importlib.import_module(f"{__name__}.{name}")
        else:
            raise unknown_choice("method", name, available_methods() + list(plugins))
    return _REGISTRY[name]


__all__ = ["AnomalyDetector", "NotFittedError", "Prediction", "available_methods", "method_class", "plugin_methods", "register"]
