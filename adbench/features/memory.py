"""Freed memory kept for reuse: fitting and scoring make the same large temporaries batch after batch.

glibc hands every allocation above its mmap threshold (dynamic, at most 32 MiB on 64-bit) back to the
kernel when it is freed, and trims the top of the heap above its trim threshold; the next batch then
faults the same pages in again, zero-filled by the kernel. On a PatchCore run over 720 training images
that was a fifth of the CPU time, in the kernel, and 16 M minor page faults (issue 26).
``recycle_freed_memory`` fixes both thresholds (``mallopt``) so that freed blocks up to 32 MiB are
reused, and ``pieces`` splits a batch so that the backbone's activations stay below that size.
"""

from __future__ import annotations

import ctypes
import functools

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_CEILING = 32 * 2**20  # the largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_BYTES = 512 * 2**20  # free memory at the top of the heap kept, at most, for the next batch
PIECE_PIXELS = 4 * 224 * 224  # input pixels per backbone piece: Lite0's widest activation (96 x H/2 x W/2) ~19 MiB


@functools.cache
def recycle_freed_memory() -> bool:
    """Set glibc's mmap threshold to its ceiling and its trim threshold to ``TRIM_BYTES``, once per process.

    False (and nothing changed) where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        _ = libc.gnu_get_libc_version  # glibc only
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_CEILING)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))


def pieces(images: torch.Tensor, pixels: int = PIECE_PIXELS) -> tuple[torch.Tensor, ...]:
    """``images`` (B, 3, H, W) split into runs of at most ``pixels`` input pixels (at least one image each)."""
    return images.split(max(1, pixels // (images.shape[-2] * images.shape[-1])))
