"""``adbench-report [results_dir=results] [output=PATH]`` / ``python -m adbench.report``: the leaderboard
(markdown, CSV, plots) from every run record (conf/report.yaml)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from .cli import hydra_command
from .results.report import write_report


@hydra_command("report", "adbench-report")
def main(cfg: DictConfig) -> None:
    print(write_report(Path(cfg.results_dir), Path(cfg.output) if cfg.output else None))


if __name__ == "__main__":
    main()
