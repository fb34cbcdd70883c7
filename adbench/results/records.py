"""Run records: one JSON file per run, named by its config hash, written atomically together with its
per-image table (whose SHA-256 the record stores); portable (no absolute machine paths) and identified
by the data's content digest rather than its folder. Reading checks each record's shape and its table:
a malformed record or a missing or damaged table is skipped, named, never read as a result."""

from __future__ import annotations

import copy
import hashlib
import json
import numbers
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import AdbenchError
from ..files import atomic_group, file_sha256

T = TypeVar("T")

RECORDS_DIR = "records"
# keys that do not change a run's result, left out of its config hash (runner hashes threshold when saving);
# ``tag`` is hashed when set: a tagged run is its own record (and leaderboard row), never the untagged one
NON_SEMANTIC_KEYS = {"results_dir", "figures", "force", "num_workers", "hydra", "cache_dir", "save_model", "threshold", "quiet"}
# where the data lives is not what it is: dataset.digest (its file list) enters the hash instead of dataset.root
LOCATION_KEYS = {"root"}
ELSEWHERE = "…"  # stands for the folders above a path outside every known anchor


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of the result-relevant config (without non-semantic keys and the data's location)."""
    relevant = {k: v for k, v in config.items() if k not in NON_SEMANTIC_KEYS and not (k == "tag" and v is None)}
    if isinstance(relevant.get("dataset"), dict):
        relevant["dataset"] = {k: v for k, v in relevant["dataset"].items() if k not in LOCATION_KEYS}
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def seedless(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without its seeds (every key named ``seed``): runs that differ only there are replicates.

    A dataset generated from the seed (it has a ``dataset.seed``) differs per seed by design, so its
    file digest goes too."""
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "seed"}
        return [strip(v) for v in node] if isinstance(node, list) else node

    out = strip(copy.deepcopy(config))
    if isinstance(config.get("dataset"), dict) and "seed" in config["dataset"]:
        out["dataset"].pop("digest", None)
    return out


def replicate_key(config: dict[str, Any]) -> str:
    """The hash shared by the seeds of one configuration (the leaderboard aggregates them into one row)."""
    return config_hash(seedless(config))


def portable_path(value: str | Path) -> str:
    """An absolute path written without this machine's folders: ``$ADBENCH_DATA/...``, ``$ADBENCH_CACHE/...``,
    relative to the working directory, ``~/...``, or else ``…/<name>``; a relative path is returned as is."""
    path = Path(value)
    if not path.is_absolute():
        return path.as_posix()
    cwd = Path.cwd()
    anchors = [("$ADBENCH_DATA", os.environ.get("ADBENCH_DATA")), ("$ADBENCH_CACHE", os.environ.get("ADBENCH_CACHE")),
               ("", str(cwd) if cwd.parent != cwd else None), ("~", str(Path.home()))]
    for name, anchor in anchors:
        if anchor and path.is_relative_to(Path(anchor).expanduser()):
            rel = path.relative_to(Path(anchor).expanduser()).as_posix()
            return "/".join(p for p in (name, "" if rel == "." else rel) if p) or "."
    return f"{ELSEWHERE}/{path.name}"


def portable(node: Any) -> Any:
    """A copy of a config tree with every absolute path string made portable (:func:`portable_path`)."""
    if isinstance(node, dict):
        return {k: portable(v) for k, v in node.items()}
    if isinstance(node, list):
        return [portable(v) for v in node]
    return portable_path(node) if isinstance(node, str) and os.path.isabs(node) else node


def record_path(results_dir: Path, record: dict[str, Any]) -> Path:
    name = f"{record['dataset']}_{record['category']}_{record['method']}_{record['config_hash']}.json"
    return Path(results_dir) / RECORDS_DIR / name.replace("/", "-")


def write_run(results_dir: Path, record: dict[str, Any], write_table: Callable[[Path], object], table_name: Callable[[Path], Path]) -> Path:
    """Write a run's per-image table (``write_table(path)``) and its record as one unit: the record names the
    table (``per_image``, beside it at ``table_name(record path)``) and stores its SHA-256 (``per_image_sha256``);
    a failure (full disk, Ctrl-C) leaves neither file new. Returns the record's path."""
    path = record_path(results_dir, record)
    table = table_name(path)
    with atomic_group([table, path]) as (tmp_table, tmp_record):
        write_table(tmp_table)
        record["per_image"], record["per_image_sha256"] = table.name, file_sha256(tmp_table)
        tmp_record.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return path


# record keys the report reads, and the types they must have
REQUIRED = {"method": str, "backbone": str, "dataset": str, "category": str, "image_size": int, "config": dict, "metrics": dict,
            "config_hash": str}


def record_problem(path: Path, record: Any) -> str | None:
    """Why ``record`` (read from ``path``) cannot be used, or None: its shape, its metric values, its per-image table
    (present, and matching its stored SHA-256)."""
    if not isinstance(record, dict):
        return f"not a run record (a JSON {type(record).__name__})"
    for key, kind in REQUIRED.items():
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            return f"not a run record ({key} missing or not a {kind.__name__})"
    for name, value in record["metrics"].items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            return f"metric {name} is {value!r}, not a number or null"
    for name, interval in (record.get("ci95") or {}).items():
        if interval is not None and not (isinstance(interval, list) and len(interval) == 2
                                         and all(v is None or isinstance(v, numbers.Real) for v in interval)):
            return f"ci95.{name} is {interval!r}, not [low, high]"
    if record.get("per_image") is not None:
        table = path.parent / str(record["per_image"])
        if not table.is_file():
            return f"its per-image table {table.name} is missing"
        stored = record.get("per_image_sha256")
        if stored is not None and file_sha256(table) != stored:
            return f"its per-image table {table.name} is damaged (SHA-256 differs from the record's)"
    return None


def scan_records(results_dir: Path) -> tuple[list[tuple[Path, dict[str, Any]]], list[tuple[Path, str]]]:
    """(path, record) of every usable record under ``results_dir/records``, by file name, and (path, reason) of
    every file skipped: unreadable JSON, not a run record, a metric that is not a number, a missing or damaged
    per-image table."""
    found, skipped = [], []
    for path in sorted((Path(results_dir) / RECORDS_DIR).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            skipped.append((path, f"unreadable ({exc})"))
            continue
        problem = record_problem(path, record)
        if problem:
            skipped.append((path, problem))
        else:
            found.append((path, record))
    return found, skipped


def change_records(results_dir: Path, change: Callable[[Path], T | None]) -> tuple[list[tuple[Path, T]], list[tuple[Path, str]]]:
    """``change(path)`` on every record file under ``results_dir/records``, by file name: (path, what it returned) where
    it changed something (a falsy return: nothing to do), (path, reason) where it raised on a record it cannot change."""
    changed, left = [], []
    for path in sorted((Path(results_dir) / RECORDS_DIR).glob("*.json")):
        try:
            result = change(path)
        except (AdbenchError, OSError, KeyError, TypeError, ValueError) as exc:
            left.append((path, str(exc)))
            continue
        if result:
            changed.append((path, result))
    return changed, left


def read_records(results_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(path, record) of every usable record (:func:`scan_records`); each skipped file is named on stderr."""
    found, skipped = scan_records(results_dir)
    for path, reason in skipped:
        print(f"warning: skipping record {path}: {reason}", file=sys.stderr)
    return found


def load_records(results_dir: Path) -> list[dict[str, Any]]:
    """Every usable record under ``results_dir/records``."""
    return [record for _, record in read_records(results_dir)]


def find_record(results_dir: Path, config_hash_value: str) -> Path | None:
    """An existing, intact record with this config hash (its per-image table present and matching), if any."""
    for path in sorted((Path(results_dir) / RECORDS_DIR).glob(f"*_{config_hash_value}.json")):
        try:
            if record_problem(path, json.loads(path.read_text())) is None:
                return path
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
    return None


def record_config(config: dict[str, Any], data_digest: str) -> dict[str, Any]:
    """The config a record stores and hashes: portable paths, and the data named by its content digest."""
    out = portable(config)
    out["dataset"]["digest"] = data_digest
    return out


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape results."""
    import numpy
    import scipy
    import sklearn
    import timm
    import torch

    from .. import __version__

    versions = {
        "adbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
    }
    try:
        import faiss

        versions["faiss"] = faiss.__version__
    except ImportError:
        versions["faiss"] = "absent"
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
