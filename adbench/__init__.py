"""adbench: one pipeline to benchmark memory-bank image anomaly detectors.

Notebook API (imported on first use, so ``import adbench`` stays light): :func:`adbench.run` and
:func:`adbench.load_model` (:mod:`adbench.api`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
API = ("run", "load_model", "RunResult", "Model", "Predictions")


def __getattr__(name: str) -> Any:
    if name in API:  # a lazy facade over the top layer, not a dependency of the layers below
        return getattr(importlib.import_module(f"{__name__}.api"), name)
    raise AttributeError(f"module 'adbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
