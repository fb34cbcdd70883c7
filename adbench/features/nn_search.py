"""Exact nearest-neighbour search over a memory bank: faiss (CPU or GPU index) or chunked torch matmul.

Both backends return **plain Euclidean** distances, sorted ascending, and the bank indices. The
matmul form ||q||^2 - 2 q·b + ||b||^2 loses digits in float32 at high dimension (1024-d PatchCore
features: ~1e-3 relative), so the distances of the k neighbours found are recomputed exactly as
||q - b|| before they are returned: scores do not depend on the backend or the chunking, and keep the
papers' units (plain, not squared, distances).

``auto`` picks faiss on CPU, and on CUDA only a GPU build of faiss (the ``gpu`` extra), whose index
then takes and returns device tensors; with a CPU-only faiss, CUDA searches run on torch's matmul.
"""

from __future__ import annotations

import importlib

import torch

from ..errors import unknown_choice

try:  # faiss is optional at import time so the torch backend always works
    import faiss
except ImportError:  # pragma: no cover - exercised only without faiss installed
    faiss = None

BACKENDS = ["auto", "faiss", "torch"]
CPU_BANK_ROWS, CPU_QUERY_ROWS = 1024, 4096  # a CPU distance block: at most 4096 x 1024 floats (16 MiB)


def faiss_gpu_available() -> bool:
    """A faiss build with GPU support and at least one GPU it can use."""
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def squared_distances(queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor | None = None) -> torch.Tensor:
    """||q - b||^2 for all pairs via ||q||^2 - 2 q·b + ||b||^2 (one matmul), clamped at 0."""
    bank_sq = (bank * bank).sum(1) if bank_sq is None else bank_sq
    dist = torch.addmm(bank_sq[None, :], queries, bank.T, alpha=-2.0)
    dist += (queries * queries).sum(1, keepdim=True)
    return dist.clamp_(min=0)


class NearestNeighbours:
    """k-NN search in a fixed bank; queries are searched in chunks so scoring memory stays bounded.

    ``max_block_bytes`` bounds the working block of one chunk: for torch the (queries x bank rows)
    float32 distance block (on CPU at most ``CPU_QUERY_ROWS`` x ``CPU_BANK_ROWS``, so that the min
    reads it from cache: 81% of the GEMM rate at width 152 against 38% for one bank-wide block,
    ``benchmarks/bench_nn_flops.py``); for faiss, whose own distance tiles have a fixed size (4096 x 1024
    floats), the float32 copy of the query chunk handed to it.
    """

    def __init__(self, backend: str = "auto", device: str | torch.device = "cpu", max_block_bytes: int = 256 * 2**20):
        if backend not in BACKENDS:
            raise unknown_choice("nn.backend", backend, BACKENDS)
        if backend == "faiss" and faiss is None:
            raise ImportError("nn.backend=faiss needs faiss-cpu or faiss-gpu installed")
        self.device = torch.device(device)
        if backend == "auto":
            usable = faiss is not None and (self.device.type != "cuda" or faiss_gpu_available())
            backend = "faiss" if usable else "torch"
        self.backend = backend
        self.max_block_bytes = max_block_bytes
        self.bank: torch.Tensor | None = None
        self._index = None
        self._on_gpu = False

    def fit(self, bank: torch.Tensor) -> NearestNeighbours:
        self.bank = bank.float().contiguous().to(self.device)
        if self.backend == "faiss":
            self._index = faiss.IndexFlatL2(bank.shape[1])
            self._on_gpu = self.device.type == "cuda" and faiss_gpu_available()
            if self._on_gpu:
                importlib.import_module("faiss.contrib.torch_utils")  # faiss indexes then take and return torch (device) tensors

                self._resources = faiss.StandardGpuResources()
                self._index = faiss.index_cpu_to_gpu(self._resources, self.device.index or 0, self._index)
            self._index.add(self.bank.cpu().numpy())
        else:
            self._bank_sq = (self.bank * self.bank).sum(1)
        return self

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
            q = q.to(self.device).float().contiguous()
            if self._on_gpu:  # queries, distances and indices stay on the GPU
                idx = self._index.search(q, k)[1]
            else:
                idx = torch.from_numpy(self._index.search(q.cpu().numpy(), k)[1]).to(self.device)
            out_d.append(self._exact(q, idx))
            out_i.append(idx)
        return _sorted(torch.cat(out_d), torch.cat(out_i), queries.device)

    def _torch_search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        n_bank = self.bank.shape[0]
        if self.device.type == "cpu":  # cache-sized blocks: the GEMM writes each block where the min reads it
            bank_rows = min(n_bank, max(k, CPU_BANK_ROWS))
            query_rows = max(1, min(CPU_QUERY_ROWS, self.max_block_bytes // (4 * bank_rows)))
        else:
            bank_rows = max(k, min(n_bank, self.max_block_bytes // (4 * 1024)))
            query_rows = max(1, self.max_block_bytes // (4 * bank_rows))
        out_d, out_i = [], []
        buffer = torch.empty(min(query_rows, len(queries)) * bank_rows, device=self.device)  # the one block, reused
        for q in queries.split(query_rows):
            best_d = best_i = None
            for start in range(0, n_bank, bank_rows):
                stop = min(start + bank_rows, n_bank)
                # ||b||^2 - 2 q.b: ||q - b||^2 less ||q||^2, the same order along the row (exact distances follow)
                block = buffer[: len(q) * (stop - start)].view(len(q), stop - start)
                torch.addmm(self._bank_sq[None, start:stop], q, self.bank[start:stop].T, alpha=-2.0, out=block)
                d, i = block.min(1, keepdim=True) if k == 1 else block.topk(min(k, stop - start), dim=1, largest=False)
                i += start
                if best_d is None:
                    best_d, best_i = d, i
                elif k == 1:  # strictly closer only: on a tie the lower bank index stays, as in one pass over the bank
                    closer = d < best_d
                    best_d, best_i = torch.where(closer, d, best_d), torch.where(closer, i, best_i)
                else:
                    best_d, order = torch.cat([best_d, d], 1).topk(k, dim=1, largest=False)
                    best_i = torch.cat([best_i, i], 1).gather(1, order)
            out_d.append(self._exact(q, best_i))
            out_i.append(best_i)
        return _sorted(torch.cat(out_d), torch.cat(out_i), queries.device)

    def _exact(self, queries: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """||q - b|| for each query and its k neighbours, in row blocks within the memory budget."""
        rows = max(1, self.max_block_bytes // (4 * idx.shape[1] * queries.shape[1]))
        return torch.cat([torch.linalg.vector_norm(q[:, None, :] - self.bank[i], dim=2)
                          for q, i in zip(queries.split(rows), idx.split(rows))])


def _sorted(dist: torch.Tensor, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbours re-ordered by their exact distances (near-ties may swap after the recomputation)."""
    dist, order = dist.sort(dim=1)
    return dist.to(device), idx.gather(1, order).to(device)
