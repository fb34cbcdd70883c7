"""Peak memory of PatchCore scoring against memory-bank size, under a nearest-neighbour block budget.

PatchCore with a 100 % coreset (every training patch kept) is fitted once on MVTec bottle (paper
settings otherwise: Lite0 blocks.2 + blocks.4, 256 → 224 px) and saved with ``adbench.model_io``.
Each measurement then runs in a fresh process: load the model, keep a random ``fraction`` of the
bank, build the search index with ``backend`` and ``max_block_bytes = budget``, record RSS, reset the
kernel's peak-RSS counter (``/proc/self/clear_refs``), score ``--test-images`` bottle test images in
one batch and read the peak (``VmHWM``). Scoring overhead = peak during scoring - RSS before it,
i.e. what chunked scoring adds on top of the bank and model.

    ADBENCH_DATA=../shared/data python benchmarks/bench_memory_budget.py
    python benchmarks/bench_memory_budget.py --budgets 16MiB,256MiB --fractions 0.5,1 --backends torch

Writes benchmarks/results/memory_budget.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import save

UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def parse_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB)?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64MiB)")
    return int(float(match.group(1)) * UNITS[match.group(2) or "B"])


def proc_status(field: str) -> int:
    """A ``/proc/self/status`` memory field, in bytes."""
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE).group(1)) * 1024


def test_images(count: int, transform) -> torch.Tensor:
    from adbench.data.dataset import ImageDataset
    from adbench.data.sources import load_mvtec

    split = load_mvtec(None, "bottle")
    chosen = [split.test[int(i)] for i in np.linspace(0, len(split.test) - 1, count)]
    dataset = ImageDataset(chosen, transform)
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def fit_full_bank(path: Path) -> dict:
    """Fit PatchCore (coreset 100 %) on bottle as a run would, and save it to ``path``."""
    from omegaconf import OmegaConf

    from adbench.api import compose_config
    from adbench.pipeline import build_pipeline
    from adbench.serving.model_io import save_model

    pipeline = build_pipeline(compose_config(["method=patchcore", "dataset=mvtec", "method.coreset_ratio=1.0", "device=cpu"])).fit()
    cfg, method, transform = pipeline.cfg, pipeline.method, pipeline.transform
    fit = {"fit_seconds": pipeline.fit_seconds, "bank_shape": list(method.memory_bank_shape), "bank_bytes": method.memory_bank_bytes, "train_images": len(pipeline.train)}
    save_model(path, method, OmegaConf.to_container(cfg.method, resolve=True), OmegaConf.to_container(cfg.backbone, resolve=True), transform, info=fit)
    return fit


def measure(model: Path, fraction: float, backend: str, budget: int, count: int) -> dict:
    """One measurement (run in a fresh process by ``main``)."""
    from adbench.features.nn_search import NearestNeighbours
    from adbench.serving.model_io import load_model

    saved = load_model(model)
    method = saved.method
    images = test_images(count, saved.transform)
    full = method.bank
    keep = torch.randperm(full.shape[0], generator=torch.Generator().manual_seed(0))[: max(1, round(fraction * full.shape[0]))]
    method.bank = full[keep.sort().values].contiguous()
    del full, keep
    method.nn = NearestNeighbours(backend, "cpu", budget).fit(method.bank)
    method.predict(images[:1])  # warm-up: one-off allocations of the backbone and libraries
    before = proc_status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to the current RSS
    start = time.perf_counter()
    method.predict(images)
    seconds = time.perf_counter() - start
    peak = proc_status("VmHWM")
    return {
        "backend": backend,
        "budget_bytes": budget,
        "fraction": fraction,
        "bank_vectors": int(method.bank.shape[0]),
        "bank_bytes": int(method.memory_bank_bytes),
        "queries": int(images.shape[0] * (images.shape[-1] // 8) ** 2),
        "rss_before_bytes": before,
        "peak_rss_bytes": peak,
        "scoring_overhead_bytes": peak - before,
        "seconds": seconds,
        "images_per_s": images.shape[0] / seconds,
    }


def mib(value: int) -> str:
    return f"{value / 2**20:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="16MiB,128MiB,1GiB", help="nearest-neighbour block budgets (method.nn_max_block_bytes)")
    parser.add_argument("--fractions", default="0.1,0.5,1.0", help="fractions of the 100%% bank kept")
    parser.add_argument("--backends", default="torch,faiss")
    parser.add_argument("--test-images", type=int, default=4, help="bottle test images scored in one batch")
    parser.add_argument("--model", type=Path, help="reuse this saved 100%% model if it exists, else fit and keep it there")
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "FRACTION", "BACKEND", "BUDGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, fraction, backend, budget = args.child
        print(json.dumps(measure(Path(model), float(fraction), backend, int(budget), args.test_images)))
        return
    if not os.environ.get("ADBENCH_DATA"):
        raise SystemExit("set ADBENCH_DATA to the folder holding mvtec/bottle (e.g. ../shared/data)")
    budgets = [parse_bytes(b) for b in args.budgets.split(",")]
    fractions = [float(f) for f in args.fractions.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or Path(tmp) / "patchcore_full.safetensors"
        if model.is_file():
            from adbench.serving.model_io import read_model_meta

            fit = read_model_meta(model)["info"]
        else:
            fit = fit_full_bank(model)
        print(f"bank {fit['bank_shape']} = {mib(fit['bank_bytes'])} MiB, fit {fit['fit_seconds']:.0f} s; model file {mib(model.stat().st_size)} MiB")
        print("| backend | budget MiB | bank % | bank vectors | bank MiB | RSS before MiB | peak RSS MiB | scoring overhead MiB | img/s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for backend in args.backends.split(","):
            for budget in budgets:
                for fraction in fractions:
                    command = [sys.executable, __file__, "--test-images", str(args.test_images), "--child", str(model), str(fraction), backend, str(budget)]
                    done = subprocess.run(command, capture_output=True, text=True, check=False)
                    if done.returncode:
                        raise SystemExit(f"measurement failed ({backend}, {budget}, {fraction}):\n{done.stderr[-3000:]}")
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                    rows.append(row)
                    print(
                        f"| {backend} | {mib(budget)} | {100 * fraction:.0f} | {row['bank_vectors']:,} | {mib(row['bank_bytes'])} | "
                        f"{mib(row['rss_before_bytes'])} | {mib(row['peak_rss_bytes'])} | {mib(row['scoring_overhead_bytes'])} | {row['images_per_s']:.2f} |",
                        flush=True,
                    )
    path = save("memory_budget", {
        "what": "PatchCore coreset_ratio=1.0 on MVTec bottle (Lite0, 224 px): peak RSS while scoring vs bank size and NN block budget",
        "fit": fit,
        "test_images": args.test_images,
        "rows": rows,
    })  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
