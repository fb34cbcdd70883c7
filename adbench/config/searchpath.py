"""Config trees of installed method plugins, found by Hydra without ``--config-dir``.

A plugin package declares an entry point in the group ``adbench.conf`` (:mod:`adbench.plugins`) whose
value names a folder of its package laid out like adbench's ``conf/`` (``method/<name>.yaml``, optionally other groups), e.g.
``adbench_knn = "adbench_knn.conf"``. The folder is located from the package's import spec, without
running the package's code (a plugin that fails to import still composes, and then fails in one line
naming it: :func:`adbench.methods.load_plugin`). :func:`register_search_path` appends every such
folder to Hydra's config search path, after adbench's own (a built-in option keeps its meaning).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin

from ..plugins import CONF_GROUP, declared


def _package_folder(dotted: str) -> Path | None:
    """The folder of ``top.sub.conf`` inside the installed package ``top``, found without importing it."""
    top, *rest = dotted.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest)
    return folder if folder.is_dir() else None


def plugin_conf_dirs() -> list[Path]:
    """The conf folders of installed plugins (entry point group ``adbench.conf``), by entry point name."""
    found = (_package_folder(entry.value.partition(":")[0]) for entry in declared(CONF_GROUP).values())
    return [folder for folder in found if folder is not None]


class PluginConfSearchPath(SearchPathPlugin):
    """Hydra search-path plugin: adbench's plugins' conf folders, after adbench's own config."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for folder in plugin_conf_dirs():
            search_path.append(provider="adbench-plugin", path=f"file://{folder}")


def register_search_path() -> None:
    """Make every later Hydra composition (``hydra.main``, ``compose``) see the plugins' conf folders."""
    Plugins.instance().register(PluginConfSearchPath)  # idempotent: a registered class is not added twice
