"""Exact nearest-neighbour search over a memory bank: faiss (CPU or GPU index) or chunked torch matmul.

Both backends return **plain Euclidean** distances (``sqrt`` of faiss's squared L2), sorted
ascending, and the bank indices. Squared distances are what faiss ``IndexFlatL2`` computes; we take
the root so scores keep the papers' units (a monotone change: image-level rankings are unaffected).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import unknown_choice

try:  # faiss is optional at import time so the torch backend always works
    import faiss
except ImportError:  # pragma: no cover - exercised only without faiss installed
    faiss = None

BACKENDS = ["auto", "faiss", "torch"]


def squared_distances(queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor | None = None) -> torch.Tensor:
    """||q - b||^2 for all pairs via ||q||^2 - 2 q·b + ||b||^2 (one matmul), clamped at 0."""
    bank_sq = (bank * bank).sum(1) if bank_sq is None else bank_sq
    dist = torch.addmm(bank_sq[None, :], queries, bank.T, alpha=-2.0)
    dist += (queries * queries).sum(1, keepdim=True)
    return dist.clamp_(min=0)


class NearestNeighbours:
    """k-NN search in a fixed bank; queries are searched in chunks so scoring memory stays bounded.

    ``max_block_bytes`` bounds the working block of one chunk: for torch the (queries x bank rows)
    float32 distance block; for faiss, whose own distance tiles have a fixed size (4096 x 1024
    floats), the float32 copy of the query chunk handed to it.
    """

    def __init__(self, backend: str = "auto", device: str | torch.device = "cpu", max_block_bytes: int = 256 * 2**20):
        if backend not in BACKENDS:
            raise unknown_choice("nn.backend", backend, BACKENDS)
        if backend == "faiss" and faiss is None:
            raise ImportError("nn.backend=faiss needs faiss-cpu or faiss-gpu installed")
        self.backend = "faiss" if backend == "auto" and faiss is not None else ("torch" if backend == "auto" else backend)
        self.device = torch.device(device)
        self.max_block_bytes = max_block_bytes
        self.bank: torch.Tensor | None = None
        self._index = None

    def fit(self, bank: torch.Tensor) -> "NearestNeighbours":
        self.bank = bank.float().contiguous().to(self.device)
        if self.backend == "faiss":
            self._index = faiss.IndexFlatL2(bank.shape[1])
            if self.device.type == "cuda" and hasattr(faiss, "StandardGpuResources"):
                self._resources = faiss.StandardGpuResources()
                self._index = faiss.index_cpu_to_gpu(self._resources, self.device.index or 0, self._index)
            self._index.add(self.bank.cpu().numpy())
        else:
            self._bank_sq = (self.bank * self.bank).sum(1)
        return self

    @property
    def nbytes(self) -> int:
        return 0 if self.bank is None else self.bank.numel() * self.bank.element_size()

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances, indices), each (N, k), distances plain L2 ascending."""
        if self.bank is None:
            raise RuntimeError("NearestNeighbours.search called before fit")
        k = min(k, self.bank.shape[0])
        if self.backend == "faiss":
            return self._faiss_search(queries, k)
        return self._torch_search(queries.to(self.device).float(), k)

    def _faiss_search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        query_rows = max(1, self.max_block_bytes // (4 * queries.shape[1]))
        out_d, out_i = [], []
        for q in queries.detach().split(query_rows):
            sq, idx = self._index.search(np.ascontiguousarray(q.float().cpu().numpy()), k)
            out_d.append(torch.from_numpy(sq).clamp_(min=0).sqrt_())
            out_i.append(torch.from_numpy(idx))
        return torch.cat(out_d).to(queries.device), torch.cat(out_i).to(queries.device)

    def _torch_search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        n_bank = self.bank.shape[0]
        bank_rows = max(k, min(n_bank, self.max_block_bytes // (4 * 1024)))
        query_rows = max(1, self.max_block_bytes // (4 * bank_rows))
        out_d, out_i = [], []
        for q in queries.split(query_rows):
            best_d = best_i = None
            for start in range(0, n_bank, bank_rows):
                stop = min(start + bank_rows, n_bank)
                # freed before the next block is computed: one block (the budget) alive at a time
                block = squared_distances(q, self.bank[start:stop], self._bank_sq[start:stop])
                d, i = block.topk(min(k, stop - start), dim=1, largest=False)
                del block
                i += start
                if best_d is not None:
                    d, order = torch.cat([best_d, d], 1).topk(k, dim=1, largest=False)
                    i = torch.cat([best_i, i], 1).gather(1, order)
                best_d, best_i = d, i
            out_d.append(best_d.sqrt_())
            out_i.append(best_i)
        return torch.cat(out_d), torch.cat(out_i)
