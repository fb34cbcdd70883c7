"""Sweeps: real parallel multiruns through Hydra's joblib launcher and a local Ray cluster, skip-by-hash reruns, presets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_config
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from adbench.config import conf_dir
from adbench.data.sources import MVTEC_CATEGORIES, make_synthetic
from adbench.results.records import RECORDS_DIR, config_hash
from adbench.runner import run

REPO = Path(__file__).resolve().parent.parent


def adbench(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "adbench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_parallel_joblib_sweep_keeps_every_record_and_reruns_skip(tmp_path, capsys):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs hydra-joblib-launcher (pip install adbench[launchers])")
    # data written once up front: parallel jobs then only read it
    make_synthetic(tmp_path / "data", "stripes", n_train=8, n_test=4, size=64)
    results = tmp_path / "results"
    common = [
        "method=patchcore", "dataset=folder", f"dataset.root={tmp_path / 'data'}",
        "dataset.resize=64", "dataset.crop=64", f"results_dir={results}", f"cache_dir={tmp_path / 'cache'}", "figures=0",
    ]
    launcher = ["hydra/launcher=local", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    # 8 jobs; the 4 on a class that does not exist fail with an adbench error, which must not stop the others
    done = adbench(["--multirun", *launcher, *common, "method.coreset_ratio=0.25,0.5", "seed=0,1", "dataset.category=stripes,no_such_class"], tmp_path)
    assert done.returncode == 2 and "no_such_class" in done.stderr, "a failed job must fail the sweep"
    assert "Traceback" not in done.stderr and "HYDRA_FULL_ERROR" not in done.stderr

    records = [json.loads(p.read_text()) for p in sorted((results / RECORDS_DIR).glob("*.json"))]
    assert len(records) == 4, done.stderr[-3000:]
    jobs = [(0.25, 0), (0.25, 1), (0.5, 0), (0.5, 1)]
    assert sorted((r["config"]["method"]["coreset_ratio"], r["seed"]) for r in records) == jobs
    assert len({r["config_hash"] for r in records}) == 4
    assert len({r["pid"] for r in records}) >= 2, "every job ran in one process: the joblib launcher did not run them in parallel"
    assert not list((results / RECORDS_DIR).glob(".*.tmp")), "temporary record files left behind"
    # one shared cache: only the jobs that ran while nothing was cached yet (one per worker) extracted features
    assert sum(r["feature_cache"]["fit"]["misses"] for r in records) <= 2 * 8
    assert all(r["feature_cache"]["fit"]["hits"] + r["feature_cache"]["fit"]["misses"] == 8 for r in records)

    # the same sweep again: every job finds its record by config hash and skips
    before = {p.name: p.stat().st_mtime_ns for p in (results / RECORDS_DIR).glob("*.json")}
    capsys.readouterr()
    for ratio, seed in jobs:
        run(make_config([*common, "dataset.category=stripes", f"method.coreset_ratio={ratio}", f"seed={seed}"]))
    assert capsys.readouterr().out.count("record exists for this config; not rerun") == 4
    assert {p.name: p.stat().st_mtime_ns for p in (results / RECORDS_DIR).glob("*.json")} == before

    run(make_config([*common, "dataset.category=stripes", "method.coreset_ratio=0.5", "seed=1", "force=true"]))
    after = {p.name: p.stat().st_mtime_ns for p in (results / RECORDS_DIR).glob("*.json")}
    assert after.keys() == before.keys()
    assert sum(after[name] != before[name] for name in before) == 1, "force=true reruns exactly that config"


def hydra_config(overrides: list[str]):
    """The composed config with its hydra node (sweeper params, launcher)."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def sweep_lists(cfg) -> dict[str, list[str]]:
    return {key: str(value).split(",") for key, value in cfg.hydra.sweeper.params.items()}


@pytest.mark.parametrize("preset", ["table2", "table4", "memory_bank", "backbones"])
def test_presets_sweep_existing_methods_and_backbones(preset):
    cfg = hydra_config([f"experiment={preset}"])
    lists = sweep_lists(cfg)
    assert cfg.dataset.name == "mvtec"
    for method in lists["method"]:
        assert (REPO / "conf" / "method" / f"{method}.yaml").is_file(), f"{preset} sweeps method={method}, which has no config"
    for backbone in lists.get("backbone", []):
        assert (REPO / "conf" / "backbone" / f"{backbone}.yaml").is_file(), f"{preset} sweeps backbone={backbone}, which has no config"
    assert set(lists["dataset.category"]) <= set(MVTEC_CATEGORIES)


def test_table2_covers_every_class_and_table4_reuses_its_runs():
    table2, table4 = hydra_config(["experiment=table2"]), hydra_config(["experiment=table4"])
    assert sorted(sweep_lists(table2)["dataset.category"]) == sorted(MVTEC_CATEGORIES)
    assert sweep_lists(table4) == sweep_lists(table2)
    job = ["method=patchcore", "dataset.category=carpet"]  # one job of each sweep: same result-relevant config
    hashes = [config_hash(OmegaConf.to_container(make_config([f"experiment={e}", *job]), resolve=True)) for e in ("table2", "table4")]
    assert hashes[0] == hashes[1]


def test_local_launcher_is_joblib_with_a_bounded_pool():
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs hydra-joblib-launcher")
    launcher = hydra_config(["hydra/launcher=local"]).hydra.launcher
    assert launcher._target_.endswith("JoblibLauncher") and launcher.n_jobs >= 1


@pytest.mark.parametrize(("name", "plugin", "target"), [
    ("slurm", "hydra_plugins.hydra_submitit_launcher", "SlurmLauncher"),
    ("ray_cluster", "hydra_plugins.hydra_ray_launcher", "RayLauncher"),
])
def test_cluster_launcher_configs_compose(name, plugin, target):
    pytest.importorskip(plugin, reason=f"launcher plugin {plugin} not installed (optional extra adbench[launchers])")
    launcher = hydra_config([f"hydra/launcher={name}"]).hydra.launcher
    assert launcher._target_.endswith(target)


def test_ray_sweep_on_a_local_cluster_writes_each_record_once(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="needs hydra-ray-launcher (pip install adbench[launchers]; .ci/run)")
    make_synthetic(tmp_path / "data", "stripes", n_train=8, n_test=4, size=64)
    results = tmp_path / "results"
    # a local Ray instance of 2 CPUs, one per run; the cluster config asks for 4 CPUs per run, more than CI has
    launcher = ["hydra/launcher=ray_cluster", "hydra.launcher.ray.remote.num_cpus=1", "+hydra.launcher.ray.init.num_cpus=2",
                "+hydra.launcher.ray.init.include_dashboard=false", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    common = ["method=patchcore", "dataset=folder", f"dataset.root={tmp_path / 'data'}", "dataset.category=stripes",
              "dataset.resize=64", "dataset.crop=64", f"results_dir={results}", "figures=0"]
    done = adbench(["--multirun", *launcher, *common, "method.coreset_ratio=0.25,0.5"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Ray Launcher is launching 2 jobs" in done.stdout + done.stderr
    records = [json.loads(p.read_text()) for p in sorted((results / RECORDS_DIR).glob("*.json"))]
    assert sorted(r["config"]["method"]["coreset_ratio"] for r in records) == [0.25, 0.5]
    assert len({r["config_hash"] for r in records}) == 2
    assert not list((results / RECORDS_DIR).glob(".*.tmp")), "temporary record files left behind"
