"""Cost of the memory-bank methods side by side: fit time, images/s, memory-bank bytes, peak RSS.

SPADE, PaDiM, Gaussian AD and PatchCore run one after another on MVTec bottle with the same backbone
(default EfficientNet-Lite0, 224 px), each in its own ``python -m adbench`` process so that peak
RSS is that method's alone. Images/s is the model time of ``predict`` over the test set (batches
of ``batch_size``); the machine's load average is recorded, since other processes share the cores.

    ADBENCH_DATA=../shared/data python benchmarks/bench_methods_cost.py
    ADBENCH_DATA=../shared/data python benchmarks/bench_methods_cost.py --set spade:method.top_k=5

``--padim-memory`` instead measures PaDiM at the paper's largest setting, WRN50-2 layers 1-3 with
d = 550 at 224 px (56x56 positions), on random images with random weights (memory and time do not
depend on the weights): model bytes, peak RSS (or peak GPU memory), fit and scoring time.
Writes benchmarks/results/padim_memory.json.

    python benchmarks/bench_methods_cost.py --padim-memory [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import save

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["spade", "padim", "gaussian_ad", "patchcore"]


def run_method(method: str, backbone: str, overrides: list[str], keep: Path | None) -> dict:
    """One ``python -m adbench`` run; returns its record (also kept under ``keep`` when given)."""
    with tempfile.TemporaryDirectory() as results:
        command = [sys.executable, "-m", "adbench", f"method={method}", "dataset=mvtec", f"backbone={backbone}",
                   f"results_dir={results}", "figures=0", "force=true", *overrides]
        load_before = os.getloadavg()[0]
        subprocess.run(command, cwd=ROOT, check=True)
        (path,) = Path(results, "records").glob("*.json")
        record = json.loads(path.read_text())
        if keep is not None:
            (keep / "records").mkdir(parents=True, exist_ok=True)
            os.replace(shutil.copy(path, keep / "records" / f".{path.name}.tmp"), keep / "records" / path.name)
    record["load_average_1min"] = [load_before, os.getloadavg()[0]]
    return record


def summary(record: dict) -> dict:
    m = record["metrics"]
    return {
        "fit_seconds": record["fit_seconds"],
        "model_images_per_s": record["throughput"]["model_images_per_s"],
        "end_to_end_images_per_s": record["throughput"]["end_to_end_images_per_s"],
        "memory_bank_bytes": record["memory_bank"]["bytes"],
        "memory_bank_shape": record["memory_bank"]["shape"],
        "peak_rss_bytes": record["peak_rss_bytes"],
        "image_auroc": m["image_auroc"],
        "pixel_auroc": m["pixel_auroc"],
        "n_train": record["n_train"],
        "n_test": record["n_test"],
        "config": record["config"]["method"],
        "load_average_1min": record["load_average_1min"],
    }


def table(rows: dict[str, dict]) -> str:
    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    lines = ["| method | fit (s) | images/s | memory bank (MiB) | peak RSS (MiB) | I-AUROC | P-AUROC | load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['fit_seconds']:.1f} | {r['model_images_per_s']:.2f} | {r['memory_bank_bytes'] / 2**20:.2f} | "
            f"{r['peak_rss_bytes'] / 2**20:.0f} | {fmt(r['image_auroc'])} | {fmt(r['pixel_auroc'])} | "
            f"{r['load_average_1min'][0]:.1f}-{r['load_average_1min'][1]:.1f} |"
        )
    return "\n".join(lines)


def padim_memory(dim: int, n_train: int, size: int, device: str) -> dict:
    """Fit and score PaDiM (WRN50-2 layers 1-3, random weights; built from the run's config, fed random images) and
    report its memory and time."""
    from adbench.api import compose_config
    from adbench.config.build import build_backbone, build_method

    cfg = compose_config(["method=padim", "backbone=wide_resnet50_2", "backbone.pretrained=false", f"method.dim={dim}", f"device={device}"])
    layers = list(cfg.method.layers)
    model = build_method(cfg.method, build_backbone(cfg.backbone, layers), torch.device(device), cfg.backbone)
    generator = torch.Generator().manual_seed(0)
    batches = [{"image": torch.randn(16, 3, size, size, generator=generator)} for _ in range(max(1, n_train // 16))]
    test = torch.randn(16, 3, size, size, generator=generator)
    model.backbone(test[:2].to(device))  # warm up: the baseline holds the backbone and its workspace
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model.fit(batches)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    model.predict(test)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    score_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "backbone": "wide_resnet50_2 (random weights)", "layers": layers, "dim": dim, "image_size": size,
        "positions": model.fit_info["positions"], "n_train": model.fit_info["images"], "device": device,
        "model_bytes": model.memory_bank_bytes, "inverse_bytes_formula_HWd2x4": model.fit_info["positions"] * dim * dim * 4,
        "baseline_rss_bytes": baseline, "peak_rss_bytes": peak,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if device.startswith("cuda") else None,
        "fit_seconds": fit_s, "score_images_per_s": test.shape[0] / score_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--backbone", default="efficientnet_lite0", help="backbone config name (conf/backbone)")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD:KEY=VALUE", help="an override for one method")
    parser.add_argument("--padim-memory", action="store_true", help="measure PaDiM WRN50-2 d=550 at 224 px instead")
    parser.add_argument("--dim", type=int, default=550)
    parser.add_argument("--n-train", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep", type=Path, default=None, metavar="RESULTS_DIR",
                        help="also keep each run's record there (e.g. results, for the leaderboard)")
    args = parser.parse_args()
    if args.padim_memory:
        result = padim_memory(args.dim, args.n_train, 224, args.device)
        gib = {k: v / 2**30 for k, v in result.items() if k.endswith("bytes") and v is not None}
        print("  ".join(f"{k} {v:.2f} GiB" for k, v in gib.items()), f" fit {result['fit_seconds']:.1f} s", f" {result['score_images_per_s']:.2f} img/s")
        print(save("padim_memory" if args.device == "cpu" else f"padim_memory_{args.device.split(':')[0]}", result))
        return
    if not os.environ.get("ADBENCH_DATA"):
        raise SystemExit("set ADBENCH_DATA to the folder holding mvtec/bottle (e.g. ../shared/data)")
    extra: dict[str, list[str]] = {}
    for item in args.set:
        method, sep, override = item.partition(":")
        if not sep or method not in METHODS:
            raise SystemExit(f"--set {item!r}: expected METHOD:KEY=VALUE with METHOD in {METHODS}")
        extra.setdefault(method, []).append(override)
    rows = {m: summary(run_method(m, args.backbone, extra.get(m, []), args.keep)) for m in args.methods}
    print(f"\nMVTec bottle, backbone={args.backbone}, {os.cpu_count()} CPU cores\n")
    print(table(rows))
    print(save("methods_cost", {"dataset": "mvtec/bottle", "backbone": args.backbone, "methods": rows}))


if __name__ == "__main__":
    main()
