"""``python -m adbench [overrides]``: the Hydra entry point (see conf/config.yaml)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .errors import AdbenchError
from .runner import run

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except AdbenchError as exc:
        print(f"adbench: error: {exc}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # a failed sweep job is reported by Hydra at the end; exiting here would stop the others
        sys.exit(2)


if __name__ == "__main__":
    main()
