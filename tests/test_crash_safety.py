"""A sweep killed with SIGKILL and restarted loses nothing, duplicates nothing and leaves no partial record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from adbench.results.records import load_records
from adbench.results.report import write_report

REPO = Path(__file__).resolve().parent.parent
RATIOS = [0.2, 0.4, 0.6, 0.8, 1.0]


def sweep_command(tmp_path: Path) -> list[str]:
    return [
        sys.executable, "-m", "adbench", "--multirun", "dataset=synthetic", f"dataset.root={tmp_path / 'data'}",
        "dataset.size=32", "dataset.resize=32", "dataset.crop=32", "dataset.n_train=4", "dataset.n_test=2",
        "device=cpu", "figures=0", f"results_dir={tmp_path / 'results'}", f"hydra.sweep.dir={tmp_path / 'multirun'}",
        "method.coreset_ratio=" + ",".join(map(str, RATIOS)),
    ]  # fmt: skip


def test_killed_sweep_restarts_with_every_record_once(tmp_path) -> None:
    records = tmp_path / "results" / "records"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    sweep = subprocess.Popen(sweep_command(tmp_path), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while len(list(records.glob("*.json"))) < 2:  # kill mid-sweep, as soon as two runs are recorded
            assert sweep.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(0.02)
    finally:
        os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait()
    assert sweep.returncode == -signal.SIGKILL
    before = {p.name: p.read_bytes() for p in records.glob("*.json")}
    assert 2 <= len(before) < len(RATIOS)

    again = subprocess.run(sweep_command(tmp_path), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    files = sorted(records.glob("*.json"))
    parsed = [json.loads(p.read_text()) for p in files]  # none truncated: every file is complete JSON
    assert sorted(r["config"]["method"]["coreset_ratio"] for r in parsed) == RATIOS  # each run exactly once
    assert len({r["config_hash"] for r in parsed}) == len(RATIOS)
    assert {name: (records / name).read_bytes() for name in before} == before  # recorded runs were skipped, not redone
    assert again.stdout.count("record exists for this config") == len(before)
    # besides records and their per-image tables, only hidden temporaries
    assert all(p.name.startswith(".") or p.suffix == ".json" or p.name.endswith(".per_image.parquet") for p in records.iterdir())
    assert len(load_records(tmp_path / "results")) == len(RATIOS)
    assert "| patchcore [coreset_ratio=" in write_report(tmp_path / "results").read_text()
