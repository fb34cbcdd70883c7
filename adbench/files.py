"""Files: the one atomic writer (readers never see a partial file; permissions follow the umask), and
a group of files committed together; the content digests (of tensors, of files, cached by path, size and
mtime so a rerun does not re-read its data); the cache folder; and the check that an output folder is
writable before any work starts."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import ConfigError, OutputError

FULL_DISK = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


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


@contextmanager
def atomic_group(paths: list[str | Path]) -> Iterator[list[Path]]:
    """Yield temporary paths beside ``paths``; once all are written they replace their targets together, in
    order (renames need no space, so a full disk fails while writing, before any target changes). On any
    error, Ctrl-C included, no temporary stays behind and every target keeps its old content; an
    ``OSError`` becomes an ``OutputError`` naming the first target."""
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            temps.append(Path(tmp))
        yield temps
        for tmp in temps:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
    except OSError as exc:
        raise OutputError(f"cannot write {targets[0]}: {exc.strerror or exc}; nothing was written") from exc
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


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


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def cache_root() -> Path:
    """adbench's cache folder: ``$ADBENCH_CACHE``, else ``$XDG_CACHE_HOME/adbench`` (default ``~/.cache/adbench``)."""
    env = os.environ.get("ADBENCH_CACHE")
    return Path(env).expanduser() if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adbench"


class FileFacts:
    """Per-file facts cached by (absolute path, size, mtime_ns) in ``cache_root()/files.sqlite``: a file's
    BLAKE2b-128 content digest, and notes on it (e.g. that it decodes). A file changed in place gets a new
    mtime, so it is read again; an unwritable cache folder only costs the re-reads."""

    def __init__(self, folder: Path | None = None) -> None:
        self.db: sqlite3.Connection | None = None
        try:
            folder = folder or cache_root()
            folder.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(folder / "files.sqlite", timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS facts (path TEXT PRIMARY KEY, size INT, mtime INT, digest TEXT, notes TEXT)")
        except (OSError, sqlite3.Error):
            self.db = None

    def _row(self, path: Path) -> tuple[tuple[int, int], tuple | None]:
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        if self.db is None:
            return key, None
        try:
            row = self.db.execute("SELECT size, mtime, digest, notes FROM facts WHERE path = ?", (str(path.absolute()),)).fetchone()
        except sqlite3.Error:
            return key, None
        return key, row if row and (row[0], row[1]) == key else None

    def _store(self, path: Path, key: tuple[int, int], digest: str | None, notes: dict) -> None:
        if self.db is None:
            return
        try:  # committed on close: one transaction per pass over the data
            self.db.execute("INSERT OR REPLACE INTO facts VALUES (?, ?, ?, ?, ?)", (str(path.absolute()), *key, digest, json.dumps(notes)))
        except sqlite3.Error:
            self.db = None

    def digest(self, path: Path) -> str:
        """BLAKE2b-128 of the file's bytes (cached)."""
        key, row = self._row(path)
        if row is not None and row[2]:
            return row[2]
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
        self._store(path, key, digest, json.loads(row[3]) if row else {})
        return digest

    def note(self, path: Path, name: str, compute: Callable[[Path], object]) -> object:
        """``compute(path)`` (JSON-serialisable), cached under ``name`` for this version of the file."""
        key, row = self._row(path)
        notes = json.loads(row[3]) if row is not None and row[3] else {}
        if name not in notes:
            notes[name] = compute(path)
            self._store(path, key, row[2] if row else None, notes)
        return notes[name]

    def close(self) -> None:
        if self.db is not None:
            try:
                self.db.commit()
            except sqlite3.Error:
                pass
            self.db.close()


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
