"""Run records: one JSON file per run, named by its config hash, written atomically; portable
(no absolute machine paths) and identified by the data's file-list digest rather than its folder."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from ..files import atomic_write_text

RECORDS_DIR = "records"
# keys that do not change a run's result, left out of its config hash (runner hashes threshold when saving)
NON_SEMANTIC_KEYS = {"results_dir", "figures", "force", "num_workers", "tag", "hydra", "cache_dir", "save_model", "threshold"}
# where the data lives is not what it is: dataset.digest (its file list) enters the hash instead of dataset.root
LOCATION_KEYS = {"root"}
ELSEWHERE = "…"  # stands for the folders above a path outside every known anchor


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of the result-relevant config (without non-semantic keys and the data's location)."""
    relevant = {k: v for k, v in config.items() if k not in NON_SEMANTIC_KEYS}
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


def write_record(results_dir: Path, record: dict[str, Any]) -> Path:
    path = record_path(results_dir, record)
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return path


def find_record(results_dir: Path, config_hash_value: str) -> Path | None:
    """An existing record with this config hash, if any."""
    matches = sorted((Path(results_dir) / RECORDS_DIR).glob(f"*_{config_hash_value}.json"))
    return matches[0] if matches else None


def read_records(results_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(path, record) of every readable record under ``results_dir/records``, by file name; unreadable files are skipped with a warning."""
    found = []
    for path in sorted((Path(results_dir) / RECORDS_DIR).glob("*.json")):
        try:
            found.append((path, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"warning: skipping unreadable record {path}: {exc}")
    return found


def load_records(results_dir: Path) -> list[dict[str, Any]]:
    """Every readable record under ``results_dir/records``."""
    return [record for _, record in read_records(results_dir)]


def record_config(config: dict[str, Any], data_digest: str) -> dict[str, Any]:
    """The config a record stores and hashes: portable paths, and the data named by its file-list digest."""
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
