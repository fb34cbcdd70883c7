"""``adbench [key=value ...]`` / ``python -m adbench``: one run or a ``--multirun`` sweep (conf/config.yaml)."""

from __future__ import annotations

from omegaconf import DictConfig

from .cli import hydra_command


@hydra_command("config", "adbench")
def main(cfg: DictConfig) -> None:
    from .runner import (
        run,  # imported here: --help and config errors answer without loading torch
    )

    run(cfg)


if __name__ == "__main__":
    main()
