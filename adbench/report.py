"""Entry point only: the console script ``adbench-report [results_dir=results] [output=PATH]`` and
``python -m adbench.report`` (conf/report.yaml). It checks the command line's values (the output folder
before any record is read, format, gallery) and calls :func:`adbench.results.report.write_report`, which
builds the leaderboard (markdown, CSV, plots) from every run record, skipping and naming a malformed record
or a missing or damaged per-image table; ``format=html`` then renders it with :mod:`adbench.results.html`
and the failure galleries of :mod:`adbench.gallery`."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from .cli import hydra_command
from .errors import ConfigError
from .files import ensure_writable
from .results.report import write_report


@hydra_command("report", "adbench-report")
def main(cfg: DictConfig) -> None:
    output = Path(cfg.output) if cfg.output else None
    if output is not None and output.is_dir():
        raise ConfigError(f"output={output}: is a folder; give a markdown file path such as {output / 'LEADERBOARD.md'}")
    if output is not None:
        ensure_writable([output.parent], "output")
    elif Path(cfg.results_dir).is_dir():
        ensure_writable([cfg.results_dir], "results_dir")
    if cfg.format not in ("markdown", "html") or not isinstance(cfg.gallery, bool):
        raise ConfigError(f"format={cfg.format!r} gallery={cfg.gallery!r}: format is markdown or html, gallery true or false")
    written = write_report(Path(cfg.results_dir), output)
    if cfg.format == "html":  # the page renders the markdown just written, with its plots
        from .gallery import galleries
        from .results.html import write_html

        written = write_html(written, written.parent / "report.html", galleries(Path(cfg.results_dir)) if cfg.gallery else None)
    print(written)


if __name__ == "__main__":
    main()
