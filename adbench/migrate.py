"""Bring run records written before content digests up to date: ``python -m adbench.migrate [RESULTS_DIR]``.

Earlier records named their data by a digest of file names and sizes (a changed pixel kept the digest, so a
rerun reused a stale record) and did not store their per-image table's SHA-256. For each such record this
reads the data its config names (roots written as ``$ADBENCH_DATA/...`` resolve against the environment),
checks that the old names-and-sizes digest still matches (the same files), and then rewrites the record
with the content digest (:func:`adbench.data.splits.split_digest`), the config hash that follows from
it and its table's SHA-256, renaming record and table to the new hash, so a rerun of the same config
finds it. Each file is read, changed and written in one step (the newest content of every other field is
kept). Records already migrated are left alone (rerunning is safe); records whose data is absent or
differs are left as they are and listed. Then image metrics added to the registry since a record was
written are filled in from its per-image table (:mod:`adbench.results.backfill`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .config.run_data import data_source
from .data.splits import Split, split_digest
from .errors import AdbenchError
from .files import atomic_group, file_sha256
from .results.backfill import fill
from .results.records import change_records, config_hash, record_path


def names_and_sizes_digest(split: Split) -> str:
    """The data digest of records before content digests: file names and byte sizes."""
    return split_digest(split, lambda path: str(path.stat().st_size))


def _local(node: Any) -> Any:
    """A record's config with portable paths made local again (``$ADBENCH_DATA/...``, ``~/...``)."""
    if isinstance(node, dict):
        return {k: _local(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_local(v) for v in node]
    if isinstance(node, str) and node.startswith("$ADBENCH_DATA") and os.environ.get("ADBENCH_DATA"):
        return os.environ["ADBENCH_DATA"] + node[len("$ADBENCH_DATA"):]
    return node  # a path outside every known folder (…/name) stays: its data is not found, the record is left alone


def migrate_record(path: Path, digests: dict[str, tuple[str, str]]) -> Path | None:
    """Migrate one record file; its new path, or None when it needed nothing. ``digests``: (old, new) data
    digests by dataset config, shared between the calls. AdbenchError naming why it cannot be migrated."""
    record = json.loads(path.read_text())
    if "per_image_sha256" in record:
        return None
    config = record["config"]
    old = config["dataset"]["digest"]
    key = json.dumps({k: config.get(k) for k in ("dataset", "setting", "seed")}, sort_keys=True)
    if key not in digests:
        local = _local({k: v for k, v in config.items() if k != "hydra"})
        local["dataset"].pop("digest", None)
        source = data_source(OmegaConf.create(local))
        digests[key] = (names_and_sizes_digest(source), split_digest(source))
    before, after = digests[key]
    if before != old:
        raise AdbenchError(f"its data digest {old} does not match the files there now ({before}): not the same data")
    config["dataset"]["digest"] = after
    record["config_hash"] = config_hash({**config, "saved_with_threshold": config.get("threshold")} if record.get("saved_model") else config)
    target = record_path(path.parent.parent, record)
    table = path.parent / record["per_image"] if record.get("per_image") else None
    new_table = target.with_name(f"{target.stem}.per_image.parquet")
    if table is not None and not table.is_file() and new_table.is_file():
        table = new_table  # moved by an earlier, interrupted migration of this record
    if table is None or not table.is_file():
        raise AdbenchError(f"its per-image table {record.get('per_image')} is missing")
    with atomic_group([new_table, target]) as (tmp_table, tmp_record):
        tmp_table.write_bytes(table.read_bytes())
        record["per_image"], record["per_image_sha256"] = new_table.name, file_sha256(tmp_table)
        tmp_record.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    for stale in (path, table):
        if stale not in (target, new_table):
            stale.unlink(missing_ok=True)
    return target


def migrate(results_dir: Path) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """Migrate every record under ``results_dir/records``: (old, new) paths migrated, (path, reason) left alone."""
    digests: dict[str, tuple[str, str]] = {}
    return change_records(results_dir, lambda path: migrate_record(path, digests))


def _outcome(done: list[str], left: list[tuple[Path, str]], refused: str, summary: str) -> None:
    """A line per record changed, one per record left alone (on stderr, with the reason), then the summary."""
    for line in done:
        print(line)
    for path, reason in left:
        print(f"{refused}: {path}: {reason}", file=sys.stderr)
    print(summary)


def main() -> None:
    results_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    moved, left = migrate(results_dir)
    _outcome([f"{old.name} -> {new.name}" for old, new in moved], left, "not migrated",
             f"{len(moved)} record(s) migrated, {len(left)} left as they were")
    filled, unfilled = fill(results_dir)
    _outcome([f"{path.name}: added {', '.join(names)}" for path, names in filled], unfilled, "metrics not filled in",
             f"{len(filled)} record(s) given new metrics from their per-image tables")
    sys.exit(2 if left or unfilled else 0)


if __name__ == "__main__":
    main()
