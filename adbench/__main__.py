"""``adbench [key=value ...]`` / ``python -m adbench``: one run or a ``--multirun`` sweep (conf/config.yaml)."""

from __future__ import annotations

from omegaconf import DictConfig

from .cli import hydra_command
from .runner import run


@hydra_command("config", "adbench")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
