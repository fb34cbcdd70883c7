"""Files: the one atomic writer (readers never see a partial file; permissions follow the umask),
the one content digest, and the check that an output folder is writable before any work starts."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import ConfigError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` (mode 0666 & ~umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file that then replaces ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def digest_update(digest: hashlib._Hash, name: str, tensor: torch.Tensor) -> None:
    """Feed a named tensor (dtype, shape and bytes) into ``digest``."""
    data = tensor.detach().to("cpu").contiguous()
    digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
    if data.numel():
        digest.update(data.reshape(-1).view(torch.uint8).numpy().data)


def content_digest(tensors: dict[str, torch.Tensor], prefix: bytes = b"") -> str:
    """SHA-256 of ``prefix`` and every tensor in name order (independent of file layout)."""
    digest = hashlib.sha256(prefix)
    for name in sorted(tensors):
        digest_update(digest, name, tensors[name])
    return digest.hexdigest()


def ensure_writable(folders: Iterable[str | Path], what: str) -> None:
    """Create each folder if needed and prove a file can be written there; ConfigError naming it otherwise."""
    for folder in folders:
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".adbench-write-check.")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigError(f"{what}={folder}: not writable ({exc.strerror or exc})") from exc
