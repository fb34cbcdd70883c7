"""Method plugins by entry point: the example package (examples/plugin) installed with pip runs from an empty
folder and is listed by --help; broken plugins fail in one line naming their package, built-ins unaffected."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_config
from sklearn.metrics import roc_auc_score

from adbench.config.schema import validate
from adbench.errors import ConfigError
from adbench.methods import method_class

REPO = Path(__file__).resolve().parent.parent


def command(*args: str, cwd: Path, path: list[Path]) -> subprocess.CompletedProcess:
    """``python -m ARGS`` with ``path`` (plugin installs) on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in path)}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """examples/plugin installed by pip (offline, no dependencies) into a folder of its own."""
    root = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(REPO / "examples" / "plugin", root / "src", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                           "--target", str(root / "site"), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return root / "site"


def test_example_plugin_runs_like_a_built_in(installed, tmp_path) -> None:
    listing = command("adbench", "--help", cwd=tmp_path, path=[installed])
    assert listing.returncode == 0, listing.stderr
    assert "knn_patches" in listing.stdout and "[plugin: adbench-knn 0.1.0]" in listing.stdout
    done = command("adbench", "method=knn_patches", "dataset=synthetic", f"dataset.root={tmp_path / 'data'}", "figures=0",
                   cwd=tmp_path, path=[installed])
    assert done.returncode == 0, done.stderr
    (record_file,) = (tmp_path / "results" / "records").glob("*.json")
    record = json.loads(record_file.read_text())
    assert record["method"] == "knn_patches" and record["config"]["method"]["max_bank"] == 20000
    assert record["deviations"] == ["random subsample of the bank instead of PatchCore's greedy coreset"]
    table = pd.read_parquet(record_file.with_name(record["per_image"]))
    assert record["metrics"]["image_auroc"] == pytest.approx(roc_auc_score(table.label, table.score))
    assert record["metrics"]["image_auroc"] >= 0.9 and record["metrics"]["pixel_auroc"] >= 0.9  # a working detector
    # its record is reported like any other
    report = command("adbench.report", "results_dir=results", cwd=tmp_path, path=[installed])
    assert report.returncode == 0, report.stderr
    assert "| knn_patches [≠paper] | **" in (tmp_path / "results" / "LEADERBOARD.md").read_text()  # [≠paper]: it declares deviations


def fake_distribution(site: Path, name: str, entry_points: str, files: dict[str, str]) -> None:
    """An installed distribution ``name`` 0.1 (a dist-info folder importlib.metadata reads) with its modules."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for relative, text in files.items():
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_text(textwrap.dedent(text))


CONF = "# {name}: a plugin method\nname: {name}\nlayers: ${{backbone.patch_layers}}\n"


@pytest.fixture
def broken_site(tmp_path) -> Path:
    site = tmp_path / "site"
    fake_distribution(site, "adbench-broken", """
        [adbench.methods]
        needs_missing = adbench_broken.missing:Detector
        no_fit = adbench_broken.plain:Detector
        half_done = adbench_broken.half:Detector
        [adbench.conf]
        adbench_broken = adbench_broken.conf
        """, {
        "adbench_broken/__init__.py": "",
        "adbench_broken/missing.py": "import adbench_no_such_dependency\n",
        "adbench_broken/plain.py": "class Detector:\n    def predict(self, images):\n        return images\n",
        "adbench_broken/half.py": """
            from adbench.methods import AnomalyDetector

            class Detector(AnomalyDetector):
                def _predict(self, images):
                    return None

                memory_bank_bytes = 0
            """,
        **{f"adbench_broken/conf/method/{n}.yaml": CONF.format(name=n) for n in ("needs_missing", "no_fit", "half_done")},
    })
    return site


@pytest.mark.parametrize(("name", "says"), [
    ("needs_missing", "cannot be loaded: ModuleNotFoundError: No module named 'adbench_no_such_dependency'"),
    ("no_fit", "lacks fit; it must be a subclass of adbench.methods.AnomalyDetector"),
    ("half_done", "does not implement _fit"),
])
def test_a_broken_plugin_is_one_line_naming_its_package(broken_site, monkeypatch, name, says) -> None:
    monkeypatch.syspath_prepend(str(broken_site))
    with pytest.raises(ConfigError) as raised:
        method_class(name)
    message = str(raised.value)
    assert message.startswith(f"method plugin '{name}' (package adbench-broken 0.1, entry point adbench_broken.") and says in message
    assert "\n" not in message
    # the built-ins keep working beside it
    validate(make_config(["method=padim", "dataset=synthetic"]))
    assert method_class("padim").__name__ == "PaDiM"


def test_a_broken_plugin_on_the_command_line(broken_site, tmp_path) -> None:
    done = command("adbench", "method=needs_missing", "dataset=synthetic", cwd=tmp_path, path=[broken_site])
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("adbench: error: method plugin 'needs_missing' (package adbench-broken 0.1") and "Traceback" not in done.stderr
    assert not (tmp_path / "results").exists()
    listing = command("adbench", "--help", cwd=tmp_path, path=[broken_site])
    assert listing.returncode == 0 and "no_fit" in listing.stdout and "patchcore" in listing.stdout
