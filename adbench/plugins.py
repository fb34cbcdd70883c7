"""Installed plugin packages, read from their metadata without importing them.

- ``adbench.methods``: ``NAME = "module:Class"``, a detector (a subclass of
  :class:`adbench.methods.AnomalyDetector`), used as ``adbench method=NAME`` (:func:`adbench.methods.method_class`);
- ``adbench.conf``: ``NAME = "package.folder"``, a folder laid out like adbench's ``conf/`` holding the
  method's ``method/NAME.yaml`` (:mod:`adbench.config.searchpath` puts it on Hydra's search path).

examples/plugin/ is a complete plugin package.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

METHODS_GROUP = "adbench.methods"
CONF_GROUP = "adbench.conf"


def declared(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group`` by name (one per name: the first installed distribution's)."""
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=group):
        found.setdefault(entry.name, entry)
    return dict(sorted(found.items()))


def package_of(entry: EntryPoint) -> str:
    """``name version`` of the distribution declaring ``entry`` (its module when unknown)."""
    dist = entry.dist
    return f"{dist.name} {dist.version}" if dist is not None else entry.value.partition(":")[0]
