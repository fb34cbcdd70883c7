"""PatchCore's 1-NN scoring rate against the GEMM rate on the same shapes, same run (CPU or CUDA).

Shapes of MVTec bottle PatchCore-10% with Lite0: a 10% coreset of its training patches (16,385 rows),
16 test images x 784 patches as queries, searched the way ``PatchCore.patch_scores`` calls
``NearestNeighbours.search`` (on CPU in pieces of 4 images, ``features.memory``; on a GPU the whole
batch), at the stored width of the reduced bank (rank 152, the default) and of the literal one
(1024, ``reduce_rank=false``). Random data: the cost depends on the shapes only. The bound is one
plain fp32 GEMM (queries x bankᵀ, output preallocated) on the same shapes; FLOPs 2 x queries x bank x dims.
Target on CPU: the search >= 70% of the GEMM rate.

    python benchmarks/bench_nn_flops.py [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _common import save

from adbench.features.memory import recycle_freed_memory
from adbench.features.nn_search import NearestNeighbours, faiss_gpu_available
from adbench.methods.base import synchronize


def best_time(fn, device: torch.device, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--queries", type=int, default=16 * 784)
    parser.add_argument("--bank", type=int, default=16_385)
    parser.add_argument("--dims", default="152,1024", help="stored widths: reduced (default) and literal bank")
    args = parser.parse_args()
    recycle_freed_memory()
    device = torch.device(args.device)
    piece = 4 * 784 if device.type == "cpu" else args.queries  # PatchCore's search calls (PatchCore._pieces)
    backends = ["torch", "faiss"] if device.type == "cpu" or faiss_gpu_available() else ["torch"]
    rows = []
    for dims in (int(d) for d in args.dims.split(",")):
        torch.manual_seed(0)
        queries = torch.randn(args.queries, dims, device=device)
        bank = torch.randn(args.bank, dims, device=device)
        flops = 2.0 * args.queries * args.bank * dims
        out = torch.empty(args.queries, args.bank, device=device)
        gemm_s = best_time(lambda: torch.mm(queries, bank.T, out=out), device)
        del out
        row = {"dims": dims, "queries": args.queries, "bank": args.bank, "search_queries_per_call": piece,
               "gemm_seconds": gemm_s, "gemm_gflops": flops / gemm_s / 1e9, "load_1min": os.getloadavg()[0]}
        for backend in backends:
            nn = NearestNeighbours(backend, device).fit(bank)
            seconds = best_time(lambda: [nn.search(q, 1) for q in queries.split(piece)], device)
            row[backend] = {"seconds": seconds, "gflops": flops / seconds / 1e9, "fraction_of_gemm": gemm_s / seconds,
                            "images_per_s": args.queries / 784 / seconds}
        rows.append(row)
        print(f"dims {dims}: GEMM {row['gemm_gflops']:.0f} GFLOP/s; " + "; ".join(
            f"{b} search {row[b]['gflops']:.0f} GFLOP/s = {100 * row[b]['fraction_of_gemm']:.0f}% of GEMM, "
            f"{row[b]['images_per_s']:.0f} img/s" for b in backends), flush=True)
    print(save(f"nn_flops_{device.type}", {"device": str(device), "threads": torch.get_num_threads(), "rows": rows,
                                           "target": "search >= 70% of the GEMM rate (CPU)"}))


if __name__ == "__main__":
    main()
