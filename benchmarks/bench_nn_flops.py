"""Nearest-neighbour scoring throughput as a fraction of plain fp32 matmul, same shapes, same run.

Scoring all test patches of MVTec bottle (83 images x 784 patches at 224 px) against a 10% coreset of
its training patches (16.4k); dims 1024 as with WRN50 (random data: the cost depends on shapes only).
FLOPs counted as 2 * queries * bank * dims (the distance matmul).

    python benchmarks/bench_nn_flops.py [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import save

from adbench.features.nn_search import NearestNeighbours


def best_time(fn, device: torch.device, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--queries", type=int, default=83 * 784)
    parser.add_argument("--bank", type=int, default=16_385)
    parser.add_argument("--dims", type=int, default=1024)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    queries = torch.randn(args.queries, args.dims, device=device)
    bank = torch.randn(args.bank, args.dims, device=device)
    flops = 2.0 * args.queries * args.bank * args.dims
    matmul_s = best_time(lambda: queries @ bank.T, device)
    results = {"shape": {"queries": args.queries, "bank": args.bank, "dims": args.dims}, "matmul_gflops": flops / matmul_s / 1e9}
    for backend in ("torch", "faiss"):
        nn = NearestNeighbours(backend, device).fit(bank)
        seconds = best_time(lambda: nn.search(queries, 1), device)
        results[backend] = {"seconds": seconds, "gflops": flops / seconds / 1e9, "fraction_of_matmul": matmul_s / seconds}
    print(f"plain fp32 matmul: {results['matmul_gflops']:.1f} GFLOP/s")
    for backend in ("torch", "faiss"):
        r = results[backend]
        print(f"{backend:5s} 1-NN scoring: {r['seconds']:.2f} s, {r['gflops']:.1f} GFLOP/s = {100 * r['fraction_of_matmul']:.0f}% of matmul")
    print(save(f"nn_flops_{device.type}", results))


if __name__ == "__main__":
    main()
