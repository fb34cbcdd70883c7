"""Run records: one JSON file per run, written atomically, merged by the report."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

RECORDS_DIR = "records"
# keys that do not change a run's result, left out of its config hash (runner hashes threshold when saving)
NON_SEMANTIC_KEYS = {"results_dir", "figures", "force", "num_workers", "tag", "hydra", "cache_dir", "save_model", "threshold"}


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of the result-relevant config."""
    relevant = {k: v for k, v in config.items() if k not in NON_SEMANTIC_KEYS}
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def load_records(results_dir: Path) -> list[dict[str, Any]]:
    """All readable records under ``results_dir/records``; unreadable files are skipped with a warning."""
    records = []
    for path in sorted((Path(results_dir) / RECORDS_DIR).glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"warning: skipping unreadable record {path}: {exc}")
    return records


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
