"""What the three commands share: one ``key=value`` argument style (Hydra overrides) for ``adbench``,
``adbench-report`` and ``adbench-predict``; one line and a meaningful exit code for every failure (2: bad
input or an output that cannot be written, also inside ``--multirun``, where the other jobs go on and
their records are kept; 130: Ctrl-C); the generated ``--help`` of each command."""

from __future__ import annotations

import functools
import itertools
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import CONFIG_PATH
from .config.catalog import command_help, help_text
from .config.searchpath import register_search_path
from .errors import AdbenchError
from .files import FULL_DISK

PROGS = {"config": "adbench", "report": "adbench-report", "predict": "adbench-predict", "import": "adbench-import"}
QUOTING = "a value with spaces or characters such as é ( ) [ ] , goes in quotes: 'dataset.root=\"/my data/x\"'"
GROUPS = ("method", "dataset", "backbone", "setting")  # config groups a sweep may vary, each job composed with its own
SWEEP_CHECKS = 64
FAILURES_ENV = "ADBENCH_SWEEP_FAILURES"  # the folder where the jobs of a sweep note their failures  # the group combinations of a sweep composed and validated up front


def quiet_libraries() -> None:
    """Silence library chatter that reads like errors (faiss's loader INFO lines about AVX2/AVX512)."""
    import logging

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*upsample.*align_corners.*")


def one_line(text: object) -> str:
    """An error message on one line."""
    return " ".join(str(text).split("\n")).strip()


def _composition_error(text: str, prog: str = "adbench") -> str:
    """Hydra's composition or parse error as one line: unknown keys, unknown group options and unparsable
    arguments named plainly, with the hint of the right command."""
    listing = "adbench --cfg job" if prog == "adbench" else f"{prog} --help"
    if match := re.search(r"Could not override '([^']+)'", text):
        return f"unknown key {match.group(1)}; {listing} lists the valid keys"
    if match := re.search(r"Key '([^']+)' is not in struct", text):
        return f"unknown key {match.group(1)}; {listing} lists the valid keys"
    if match := re.search(r"Could not find '([^'/]+)/([^']+)'.*?Available options in '[^']+':\s*(.*?)\s*Config search path", text, re.DOTALL):
        return f"unknown {match.group(1)} '{match.group(2)}'; valid: {', '.join(match.group(3).split())}"
    if match := re.search(r"LexerNoViableAltException: (.*)|Error parsing override '(.*?)'|mismatched input .*", text):
        where = (match.group(1) or match.group(2) or text.splitlines()[0]).strip()
        return f"cannot parse argument {where!r}: every argument is key=value; {QUOTING}"
    lines = [line.strip() for line in text.strip().splitlines()]
    return " ".join(line for line in lines if line and not line.startswith(("Set the environment", "See https://hydra.cc")))[:500]


def _jobs(argv: list[str]) -> list[list[str]]:
    """The overrides of the sweep's jobs to check up front: every combination of the swept config groups
    (``method=cfa,fcdd``; at most ``SWEEP_CHECKS``), other swept keys at their first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups, fixed = [], []
    for override in OverridesParser.create().parse_overrides(argv):
        if override.is_sweep_override():
            values = [f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()]
            if override.key_or_group in GROUPS:
                groups.append(values)
            else:
                fixed.append(values[:1])
        else:
            fixed.append([override.input_line])
    return [[*combo] for combo in itertools.islice(itertools.product(*groups, *fixed), SWEEP_CHECKS)] or [[]]


def sweep_args(argv: list[str]) -> list[str]:
    """``argv`` with the keys of a swept group made per-job: ``method=cfa,fcdd method.epochs=2`` gives every job's
    method ``epochs=2`` (``++method.epochs=2``: set, or added and then checked against that job's method), where
    Hydra would check it against the default method before composing any job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not any(a in ("--multirun", "-m") for a in argv):
        return argv
    plain = [a for a in argv if not a.startswith("-")]
    try:
        swept = {o.key_or_group for o in OverridesParser.create().parse_overrides(plain) if o.is_sweep_override() and o.key_or_group in GROUPS}
    except Exception:  # noqa: BLE001 - reported by check_overrides
        return argv
    return [f"++{a}" if not a.startswith(("-", "+", "~")) and a.split("=", 1)[0].split(".", 1)[0] in swept and "." in a.split("=", 1)[0]
            else a for a in argv]


def check_overrides(config_name: str, argv: list[str], prog: str | None = None) -> str | None:
    """Compose the config of the sweep's jobs (one job without ``--multirun``; each combination of swept groups
    with it) and validate each; the one-line error, or None when fine (and for flags that are Hydra's own
    business: --help, --cfg, --config-dir ...)."""
    from hydra import compose, initialize_config_module

    from .config.schema import missing_keys, validate

    prog = prog or PROGS.get(config_name, "adbench")
    if any(a.startswith("-") and a not in ("--multirun", "-m") for a in argv):
        return None
    try:
        jobs = _jobs([a for a in sweep_args(argv) if not a.startswith("-")])
    except Exception as exc:  # noqa: BLE001 - Hydra's override parser: the message names the argument
        return _composition_error(str(exc), prog)
    for overrides in jobs:
        try:
            with initialize_config_module("adbench.conf", version_base=None):
                cfg = compose(config_name, overrides=overrides)
        except Exception as exc:  # noqa: BLE001 - Hydra / OmegaConf composition errors: the message names the key
            return _composition_error(str(exc), prog)
        missing = missing_keys(cfg)
        if missing and config_name != "config":
            return f"{', '.join(f'{k}=...' for k in missing)}: required, no value given"
        if config_name == "config":
            try:
                validate(cfg)
            except AdbenchError as exc:
                return one_line(exc)
    return None


def _failure(exc: BaseException) -> str | None:
    """The one line for an error the user can act on (bad input, an output that cannot be written), else None."""
    if isinstance(exc, AdbenchError):
        return one_line(exc)
    if isinstance(exc, OSError) and exc.errno in FULL_DISK:
        return one_line(f"cannot write {exc.filename or 'an output file'}: {exc.strerror}; nothing partial was kept")
    return None


def hydra_command(config_name: str, prog: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], None]]:
    """Turn ``task(cfg)`` into a console entry point: Hydra app on ``conf/<config_name>.yaml``, checked
    overrides; a bad input or unwritable output → one line on stderr and exit code 2 (in a sweep the job
    fails, the others go on, and the sweep exits 2 at the end); Ctrl-C → exit 130, no traceback."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], None]:
        @hydra.main(version_base=None, config_path=CONFIG_PATH, config_name=config_name)
        def app(cfg: DictConfig) -> None:
            quiet_libraries()
            try:
                task(cfg)
            except (AdbenchError, OSError) as exc:
                line = _failure(exc)
                if line is None:
                    raise
                print(f"{prog}: error: {line}", file=sys.stderr)
                if HydraConfig.get().mode != RunMode.MULTIRUN:
                    sys.exit(2)
                # the other jobs of the sweep go on; the sweep's process counts the failures at the end, also of jobs
                # run in other processes of this machine (joblib launcher), through files in the folder it named
                if os.environ.get(FAILURES_ENV):
                    (Path(os.environ[FAILURES_ENV]) / f"{os.getpid()}-{HydraConfig.get().job.num}").write_text(line)

        @functools.wraps(task)
        def main() -> None:
            os.environ.setdefault("KMP_WARNINGS", "0")
            register_search_path()  # installed method plugins' conf folders (adbench/config/searchpath.py)
            if not OmegaConf.has_resolver("adbench_help"):
                OmegaConf.register_new_resolver("adbench_help", lambda: help_text(prog) if config_name == "config" else command_help(config_name, prog))
            failures = Path(tempfile.mkdtemp(prefix="adbench-sweep-"))
            os.environ[FAILURES_ENV] = str(failures)
            try:
                error = check_overrides(config_name, sys.argv[1:], prog)
                if error:
                    print(f"{prog}: error: {error}", file=sys.stderr)
                    sys.exit(2)
                sys.argv = [prog, *sweep_args(sys.argv[1:])]
                app()
            except KeyboardInterrupt:
                # on a line of its own: a progress bar may have been cut mid-line
                print(f"\n{prog}: interrupted; records already written are kept, nothing partial was left", file=sys.stderr)
                sys.exit(130)
            finally:
                failed = len(list(failures.iterdir()))
                shutil.rmtree(failures, ignore_errors=True)
            if failed:
                print(f"{prog}: error: {failed} job(s) of the sweep failed (named above); the other jobs' records are kept", file=sys.stderr)
                sys.exit(2)

        return main

    return decorate
