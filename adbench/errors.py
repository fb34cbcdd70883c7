"""Errors adbench raises for bad input; each names the file or config key at fault."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class AdbenchError(Exception):
    """Base class of adbench's own errors."""


class ConfigError(AdbenchError, ValueError):
    """A config key has an invalid or unknown value."""


class DataError(AdbenchError):
    """A data file or folder is missing, unreadable or inconsistent."""


class OutputError(AdbenchError):
    """An output file could not be written (full disk, read-only folder); nothing partial was left."""


class WeightsUnavailableError(AdbenchError, RuntimeError):
    """No pretrained weights could be found for a backbone."""


def unknown_choice(key: str, value: object, valid: list[str]) -> ConfigError:
    """Error for an unknown name, listing the valid ones."""
    return ConfigError(f"unknown {key} {value!r}; valid: {', '.join(sorted(valid))}")


@contextmanager
def reraise_as(error: type[AdbenchError], message: str, *caught: type[Exception]) -> Iterator[None]:
    """An exception of the ``caught`` types (any when none is named) raised inside becomes ``error``:
    ``message (the original message)``, chained to the original."""
    try:
        yield
    except (caught or (Exception,)) as exc:
        raise error(f"{message} ({exc})") from exc
