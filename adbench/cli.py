"""What the three commands share: one ``key=value`` argument style (Hydra overrides) for ``adbench``,
``adbench-report`` and ``adbench-predict``; one-line errors with exit code 2; the generated ``--help``."""

from __future__ import annotations

import functools
import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import CONFIG_PATH
from .config.catalog import help_text
from .errors import AdbenchError


def quiet_libraries() -> None:
    """Silence library chatter that reads like errors (faiss's loader INFO lines about AVX2/AVX512)."""
    import logging

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*upsample.*align_corners.*")


def _composition_error(text: str) -> str:
    """Hydra's composition error as one line: unknown keys and unknown group options named plainly."""
    if match := re.search(r"Could not override '([^']+)'", text):
        return f"unknown key {match.group(1)}; adbench --cfg job lists the valid keys"
    if match := re.search(r"Could not find '([^'/]+)/([^']+)'.*?Available options in '[^']+':\s*(.*?)\s*Config search path", text, re.DOTALL):
        return f"unknown {match.group(1)} '{match.group(2)}'; valid: {', '.join(match.group(3).split())}"
    lines = [line.strip() for line in text.strip().splitlines()]
    return " ".join(line for line in lines if line and not line.startswith("Set the environment"))[:500]


def check_overrides(config_name: str, argv: list[str]) -> str | None:
    """Compose the config of the first job of ``argv`` and validate it; the one-line error, or None when fine
    (and for flags that are Hydra's own business: --help, --cfg, --config-dir ...)."""
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .config.schema import missing_keys, validate

    if any(a.startswith("-") and a not in ("--multirun", "-m") for a in argv):
        return None
    try:
        first = []
        for override in OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")]):
            values = list(override.sweep_string_iterator()) if override.is_sweep_override() else []
            first.append(f"{override.get_key_element()}={values[0]}" if values else override.input_line)
        with initialize_config_module("adbench.conf", version_base=None):
            cfg = compose(config_name, overrides=first)
    except Exception as exc:  # noqa: BLE001 - Hydra / OmegaConf composition errors: the message names the key
        return _composition_error(str(exc))
    missing = missing_keys(cfg)
    if missing and config_name != "config":
        return f"{', '.join(f'{k}=...' for k in missing)}: required, no value given"
    if config_name == "config":
        try:
            validate(cfg)
        except AdbenchError as exc:
            return str(exc)
    return None


def hydra_command(config_name: str, prog: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], None]]:
    """Turn ``task(cfg)`` into a console entry point: Hydra app on ``conf/<config_name>.yaml``, checked
    overrides, ``AdbenchError`` → one line on stderr and exit code 2 (in a sweep the job fails, the others go on)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], None]:
        @hydra.main(version_base=None, config_path=CONFIG_PATH, config_name=config_name)
        def app(cfg: DictConfig) -> None:
            quiet_libraries()
            try:
                task(cfg)
            except AdbenchError as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr)
                if HydraConfig.get().mode == RunMode.MULTIRUN:
                    raise  # Hydra reports a failed sweep job at the end; exiting here would stop the others
                sys.exit(2)

        @functools.wraps(task)
        def main() -> None:
            os.environ.setdefault("KMP_WARNINGS", "0")
            if not OmegaConf.has_resolver("adbench_help"):
                OmegaConf.register_new_resolver("adbench_help", lambda: help_text(prog))
            error = check_overrides(config_name, sys.argv[1:])
            if error:
                print(f"{prog}: error: {error}", file=sys.stderr)
                sys.exit(2)
            sys.argv[0] = prog
            app()

        return main

    return decorate
