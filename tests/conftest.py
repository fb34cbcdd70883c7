"""Shared fixtures: the real data root (skipped without it) and a one-call runner over Hydra overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from adbench.config import conf_dir
from adbench.runner import run


@pytest.fixture(scope="session")
def data_root() -> Path:
    """``$ADBENCH_DATA`` (MVTec-layout data, e.g. ../shared/data); skips the test without it."""
    root = os.environ.get("ADBENCH_DATA")
    if not root or not (Path(root) / "mvtec" / "bottle").is_dir():
        pytest.skip("real data not available: set ADBENCH_DATA to a folder holding mvtec/bottle (CI: ../shared/data)")
    return Path(root)


def make_config(overrides: list[str]) -> DictConfig:
    """The composed config for ``python -m adbench <overrides>``."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return compose(config_name="config", overrides=overrides)


def run_overrides(overrides: list[str], results_dir: Path) -> dict:
    """Run one config (no figure) into ``results_dir`` and return its record."""
    return run(make_config([*overrides, f"results_dir={results_dir}", "figures=0"]))
