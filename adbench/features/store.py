"""Training features held once during a fit, within a memory budget (PatchCore, ReConPatch, SPADE).

A method appends each batch's rows; the store copies them into blocks of ``BLOCK_BYTES`` (so no
list of batch tensors is ever concatenated into a second copy). While the rows fit the budget the
blocks stay in memory. Past it, every block is written to an unlinked temporary file (in ``TMPDIR``)
and freed; the rows are then read back with plain reads, block by block (``chunks``) or as the rows
asked for (``take``), never by mapping the whole file, so the resident memory stays bounded.

The budget is the store's ``budget_bytes``, which a method takes from ``fit(batches, memory_budget)`` (the
config key ``fit_memory``); None: half the memory available when the store is created.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import numpy as np
import torch

BLOCK_BYTES = 64 * 2**20
GAP_ROWS = 256  # take(): wanted rows closer than this are read in one piece


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable`` of /proc/meminfo; free pages elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class FeatureStore:
    """Rows (float32, ``dim`` columns) appended in order and read back in blocks or by index."""

    def __init__(self, budget_bytes: int | None = None):
        self.budget_bytes = budget_bytes if budget_bytes is not None else available_memory() // 2
        self.dim: int | None = None
        self.rows = 0
        self._blocks: list[torch.Tensor] = []  # full blocks in memory (none once spilled)
        self._open: torch.Tensor | None = None  # the block being filled
        self._filled = 0  # rows of ``_open`` in use
        self._file = None  # the temporary file, once spilled
        self._moved = False  # tensor() took the in-memory blocks

    # --- writing -------------------------------------------------------------------------------
    def append(self, rows: torch.Tensor) -> None:
        """Copy ``rows`` (n, dim) in after the rows held."""
        rows = rows.detach()
        if self.dim is None:
            self.dim = int(rows.shape[1])
        elif rows.shape[1] != self.dim:
            raise ValueError(f"FeatureStore holds {self.dim}-d rows, got {rows.shape[1]}-d")
        done = 0
        while done < rows.shape[0]:
            if self._open is None:
                self._open = torch.empty(self.block_rows, self.dim)
                self._filled = 0
            take = min(rows.shape[0] - done, self.block_rows - self._filled)
            self._open[self._filled : self._filled + take] = rows[done : done + take]
            self._filled += take
            self.rows += take
            done += take
            if self._filled == self.block_rows:
                self._close_block()
        if self._file is None and self.nbytes > self.budget_bytes:
            self._spill()

    @property
    def block_rows(self) -> int:
        return max(1, BLOCK_BYTES // (4 * self.dim))

    def _close_block(self) -> None:
        block, self._open = self._open[: self._filled], None
        if self._file is None:
            self._blocks.append(block)
        else:
            self._write(block)

    def _spill(self) -> None:
        """Move the full blocks to a new temporary file; later blocks go there when full."""
        self._file = tempfile.TemporaryFile(prefix="adbench-features-", buffering=0)
        for held in self._blocks:
            self._write(held)
        self._blocks = []

    def _write(self, block: torch.Tensor) -> None:
        view = memoryview(block.contiguous().numpy()).cast("B")
        while len(view):
            view = view[self._file.write(view) :]

    def _sealed(self) -> None:
        """Put the partly filled block with the others (done before any read)."""
        if self._moved:
            raise RuntimeError("FeatureStore: its rows were moved out by tensor()")
        if self._open is not None:
            self._close_block()

    # --- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.rows

    @property
    def nbytes(self) -> int:
        """Bytes of the rows held (in memory or in the file)."""
        return self.rows * 4 * (self.dim or 0)

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def chunks(self, device: torch.device | str | None = None) -> Iterator[torch.Tensor]:
        """Every row in order, one block at a time (read from the file when spilled), on ``device``."""
        self._sealed()
        if self._file is None:
            for block in self._blocks:
                yield block.to(device) if device is not None else block
            return
        for start in range(0, self.rows, self.block_rows):
            block = self._read(start, min(self.rows, start + self.block_rows))
            yield block.to(device) if device is not None else block

    def _read(self, start: int, stop: int) -> torch.Tensor:
        out = np.empty((stop - start, self.dim), np.float32)
        view = memoryview(out).cast("B")
        offset, done = start * 4 * self.dim, 0
        while done < len(view):
            got = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"short read from the feature file at byte {offset + done}")
            done += got
        return torch.from_numpy(out)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """The rows ``index`` (1-D), in that order, as one (len(index), dim) tensor."""
        self._sealed()
        index = torch.as_tensor(index, dtype=torch.long).cpu()
        out = torch.empty(index.numel(), self.dim or 0)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.rows):
            raise IndexError(f"FeatureStore.take: index out of range for {self.rows} rows")
        order = torch.argsort(index)
        wanted = index[order]
        if self._file is None:
            bounds = torch.tensor([0, *np.cumsum([len(b) for b in self._blocks]).tolist()])
            which = torch.searchsorted(bounds, wanted, right=True) - 1
            for b in torch.unique(which).tolist():
                hit = (which == b).nonzero()[:, 0]
                out[order[hit]] = self._blocks[b][wanted[hit] - bounds[b]]
            return out
        # spilled: runs of nearby wanted rows, each read in one piece of at most one block
        breaks = ((wanted[1:] - wanted[:-1]) > GAP_ROWS).nonzero()[:, 0] + 1
        first = 0
        for last in [*breaks.tolist(), wanted.numel()]:
            while first < last:
                start = int(wanted[first])
                stop = int(torch.searchsorted(wanted[first:last], start + self.block_rows)) + first
                piece = self._read(start, int(wanted[stop - 1]) + 1)
                out[order[first:stop]] = piece[wanted[first:stop] - start]
                first = stop
        return out

    def tensor(self) -> torch.Tensor:
        """All rows as one (rows, dim) tensor, still held once: in memory, the blocks are moved into it one by
        one (each freed once copied: the store cannot be read afterwards); spilled, the file mapped read-only."""
        self._sealed()
        if self._file is not None:
            return torch.from_numpy(np.memmap(self._file, np.float32, mode="c", shape=(self.rows, self.dim)))
        out = torch.empty(self.rows, self.dim or 0)
        start = 0
        while self._blocks:
            block = self._blocks.pop(0)
            out[start : start + len(block)] = block
            start += len(block)
            del block
        self._moved = True
        return out

    def close(self) -> None:
        """Free the blocks and delete the file."""
        self._blocks, self._open = [], None
        if self._file is not None:
            self._file.close()
            self._file = None
