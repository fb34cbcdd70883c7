"""Recompute the ``ci95`` (and the ``bootstrap`` entry saying how) of every committed record from its per-image
table with :func:`adbench.metrics.confidence_intervals`; no other field is touched.

Each record is read, changed and written back at once (atomically), so fields that other tools add meanwhile
are kept. A metric the record leaves undefined keeps a null interval.

    python benchmarks/refresh_intervals.py [results/records]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adbench.files import atomic_write_text
from adbench.metrics import confidence_intervals, read_per_image
from adbench.metrics.intervals import describe


def refresh(record_path: Path) -> bool:
    """True when the record had a per-image table and was rewritten."""
    record = json.loads(record_path.read_text())
    if not record.get("per_image"):
        return False
    seed = int((record.get("bootstrap") or {}).get("seed", record.get("seed") or 0))
    intervals = confidence_intervals(read_per_image(record_path.parent / record["per_image"]), seed=seed)
    current = json.loads(record_path.read_text())  # re-read just before writing: keep what others changed meanwhile
    current["ci95"] = {m: (interval if current["metrics"].get(m) is not None else None) for m, interval in intervals.items()}
    current["bootstrap"] = describe(seed=seed)
    atomic_write_text(record_path, json.dumps(current, indent=2, sort_keys=True, default=str) + "\n")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path, default=Path("results/records"), help="the records folder")
    folder = parser.parse_args().folder
    done = [p.name for p in sorted(folder.glob("*.json")) if refresh(p)]
    print(f"refreshed ci95 of {len(done)} records in {folder}")


if __name__ == "__main__":
    main()
