"""The GPU set: throughput and peak GPU memory of PatchCore, PaDiM, SPADE and CFA, the greedy
coreset of ELPV's 346k PatchCore features on CUDA, and the 1-NN GEMM rate. One process, <= 10 min.

    python benchmarks/bench_gpu.py                                   # the set
    python benchmarks/bench_gpu.py backbone=efficientnet_lite0       # real offline weights
    python benchmarks/bench_gpu.py --methods patchcore,padim --set cfa:method.epochs=5 --skip coreset,knn

Methods: fit on 64 synthetic 256 px images (generated here), one warm-up batch, then 1,024 test
images scored from batches decoded beforehand (model images/s) and through the runner's data loader
(``num_workers`` persistent worker processes, pinned memory): a first pass starts the workers, the
second is the end-to-end figure (target >= 70% of the model's images/s). A fresh loader over the
first 64 test images is the start-up-cost row (worker start-up over a handful of batches, which is
what a 64- or 83-image test set measures). ``--bottle``: MVTec bottle instead (83 test images).
Peak GPU memory (torch allocator) of fit and scoring. A method that fails is reported and the others go on.

The default backbone is wide_resnet50_2 with backbone.pretrained=false: random weights give the
papers' network cost but meaningless anomaly scores, so these figures are throughput and memory
only. The script says so in its output.

Coreset: PatchCore's projected features of the ELPV mono training cells (computed on the GPU with
the default Lite0 config, cached in .cache/bench/), 10% and 1% picks by ``greedy_coreset`` on CUDA,
and the share of the 1% picks the exact CPU path also makes. kNN: ``NearestNeighbours`` (torch, and
faiss when it has GPU support) against plain fp32 matmul at PatchCore's scoring shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from adbench.config import conf_dir
from adbench.config.build import resolve_device
from adbench.features.coreset import greedy_coreset
from adbench.features.nn_search import NearestNeighbours, faiss_gpu_available
from adbench.methods.scoring import score_batches
from adbench.methods.base import synchronize
from adbench.pipeline import build_pipeline, loader

GPU_SET = ["patchcore", "padim", "spade", "cfa"]
WORKERS = min(8, os.cpu_count() or 1)
DEFAULTS = ["backbone=wide_resnet50_2", "backbone.pretrained=false", f"num_workers={WORKERS}"]
SYNTHETIC = ["dataset=synthetic", "dataset.size=256", "dataset.resize=256", "dataset.crop=224", "dataset.n_train=64"]
TEST_IMAGES = 1024  # end-to-end throughput over at least 1,000 images (a CPU dry run uses fewer)
STARTUP_IMAGES = 64
BOTTLE = ["dataset=mvtec", "dataset.category=bottle"]
# PaDiM's paper setting for WRN50-2: 550 of 1792 channels
PER_METHOD_DEFAULTS = {"padim": ["method.dim=550"]}
SECTIONS = ("methods", "coreset", "knn")


def gib(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**30:.2f}"


def _sync_and_reset(device: torch.device) -> None:
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def measure(cfg, device: torch.device) -> dict:
    """Fit, warm up, then score the test set from memory (model) and through the loader (end to end)."""
    pipeline = build_pipeline(cfg)  # the run's data, backbone, method and transform
    method, test = pipeline.method, pipeline.test
    fit_s = pipeline.fit().fit_seconds  # timed and synchronised; the peak GPU memory counted from its start
    peak_fit = _peak(device)

    test_batches = list(loader(test, cfg))  # decoded once: the model's rate without the data loading
    method.predict(test_batches[0]["image"])  # warm-up: kernels, allocator, cuDNN choices
    _sync_and_reset(device)
    model = score_batches(method, test_batches)
    del test_batches
    startup = score_batches(method, loader(torch.utils.data.Subset(test, range(min(STARTUP_IMAGES, len(test)))), cfg))
    persistent = loader(test, cfg)  # persistent workers: started by the first pass, reused by the second
    first = score_batches(method, persistent)
    end_to_end = score_batches(method, persistent)  # decoding in the loader's worker processes
    return {
        "images_per_s": model.model_images_per_s,
        "end_to_end_images_per_s": end_to_end.end_to_end_images_per_s,
        "end_to_end_fraction_of_model": end_to_end.end_to_end_images_per_s / model.model_images_per_s,
        "first_pass_images_per_s": first.end_to_end_images_per_s,
        f"startup_{STARTUP_IMAGES}_images_per_s": startup.end_to_end_images_per_s,
        f"startup_{STARTUP_IMAGES}_fraction_of_model": startup.end_to_end_images_per_s / model.model_images_per_s,
        "num_workers": int(cfg.num_workers),
        "fit_s": fit_s,
        "peak_gpu_fit_bytes": peak_fit,
        "peak_gpu_predict_bytes": _peak(device),
        "memory_bank_bytes": int(method.memory_bank_bytes),
        "memory_bank_shape": list(method.memory_bank_shape),
        "n_train": len(train),
        "n_test": len(test),
        "dataset": f"{cfg.dataset.name}/{cfg.dataset.category}",
        "backbone": backbone.name,
        "weights": backbone.weights_source,
    }


def methods_section(methods: list[str], overrides: list[str], per_method: dict[str, list[str]], output: Path, results: dict,
                    device: torch.device, bottle: bool, test_images: int) -> None:
    data = BOTTLE if bottle else [*SYNTHETIC, f"dataset.n_test={test_images}"]
    rows = results.setdefault("methods", [])
    with tempfile.TemporaryDirectory(prefix="adbench-gpu-") as scratch:
        for method in methods:
            where = [] if bottle else [f"dataset.root={scratch}"]
            full = [*DEFAULTS, f"device={device.type}", *data, *where, *overrides, f"method={method}", *per_method.get(method, [])]
            print(f"--- {method}: {' '.join(full)}", flush=True)
            try:
                with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
                    cfg = compose(config_name="config", overrides=full)
                torch.manual_seed(cfg.seed)
                row = {"method": method, "overrides": full, **measure(cfg, resolve_device(cfg.device))}
            except Exception as exc:  # noqa: BLE001 - report and go on with the next method
                traceback.print_exc()
                row = {"method": method, "overrides": full, "error": f"{type(exc).__name__}: {exc}"}
            finally:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            rows.append(row)
            write(output, results, partial=True)  # a killed run still leaves what it measured


def coreset_section(device: torch.device, results: dict) -> None:
    """The 346k ELPV coreset on CUDA (10% and 1%), and the 1% picks against the exact CPU path's."""
    from bench_coreset import patchcore_projection

    points = torch.from_numpy(patchcore_projection("elpv_mono_224", ["dataset=elpv", "dataset.category=mono"], device=str(device)))
    on_device = points.to(device)
    rows = {}
    for ratio in (0.1, 0.01):
        n_select = int(len(points) * ratio)
        greedy_coreset(on_device[:1000], 10)  # warm-up
        synchronize(device)
        began = time.perf_counter()
        picks = greedy_coreset(on_device, n_select, progress=False)
        synchronize(device)
        rows[f"ratio_{ratio}"] = {"points": list(points.shape), "selected": n_select, "seconds": time.perf_counter() - began}
        if ratio == 0.01:
            began = time.perf_counter()
            cpu = greedy_coreset(points, n_select, progress=False)
            rows[f"ratio_{ratio}"]["cpu_exact_seconds"] = time.perf_counter() - began
            rows[f"ratio_{ratio}"]["shared_picks_with_cpu_exact"] = len(set(picks.cpu().tolist()) & set(cpu.tolist())) / n_select
        print(f"coreset {ratio:.0%} of {len(points):,}: {rows[f'ratio_{ratio}']}", flush=True)
    results["coreset"] = rows


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


def knn_section(device: torch.device, results: dict, queries: int = 83 * 784, bank: int = 16_385, dims: int = 1024) -> None:
    """1-NN scoring of bottle's test patches against a 10% coreset (WRN50 dims), as a fraction of plain fp32 matmul."""
    torch.manual_seed(0)
    q, b = torch.randn(queries, dims, device=device), torch.randn(bank, dims, device=device)
    flops = 2.0 * queries * bank * dims
    matmul_s = best_time(lambda: q @ b.T, device)
    rows = {"shape": {"queries": queries, "bank": bank, "dims": dims}, "matmul_gflops": flops / matmul_s / 1e9,
            "tf32_matmul_allowed": torch.backends.cuda.matmul.allow_tf32}
    for backend in ("torch", "faiss") if faiss_gpu_available() else ("torch",):
        nn = NearestNeighbours(backend, device).fit(b)
        seconds = best_time(lambda: nn.search(q, 1), device)
        rows[backend] = {"seconds": seconds, "gflops": flops / seconds / 1e9, "fraction_of_matmul": matmul_s / seconds}
    print(f"kNN: {rows}", flush=True)
    results["knn"] = rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides after the defaults: " + " ".join(DEFAULTS))
    parser.add_argument("--methods", default=",".join(GPU_SET), help=f"comma-separated (default: {','.join(GPU_SET)})")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD:KEY=VALUE", help="an override for one method only")
    parser.add_argument("--skip", default="", help=f"comma-separated sections to leave out: {', '.join(SECTIONS)}")
    parser.add_argument("--bottle", action="store_true", help="MVTec bottle (83 test images) instead of the synthetic set")
    parser.add_argument("--test-images", type=int, default=None, help=f"synthetic test images (default {TEST_IMAGES}; CPU dry run 48)")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu: a dry run of the script on small settings")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "gpu.json"))
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs CUDA (torch.cuda.is_available() is False); --device cpu is a dry run")
    per_method = {m: list(v) for m, v in PER_METHOD_DEFAULTS.items()}
    for item in args.set:
        method, _, override = item.partition(":")
        per_method.setdefault(method, []).append(override)
    device, skip, output = torch.device(args.device), set(filter(None, args.skip.split(","))), Path(args.output)
    began = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}), dry run"
    results: dict = {"device": name, "workers": WORKERS, "faiss_gpu": faiss_gpu_available()}
    if "knn" not in skip:
        knn_section(device, results, *(() if device.type == "cuda" else (2000, 1000, 256)))
    if "coreset" not in skip:
        coreset_section(device, results)
    if "methods" not in skip:
        test_images = args.test_images or (TEST_IMAGES if device.type == "cuda" else 48)
        methods_section(args.methods.split(","), args.overrides, per_method, output, results, device, args.bottle, test_images)
    results["total_seconds"] = time.perf_counter() - began
    ok = [r for r in results.get("methods", []) if "error" not in r]
    note = ("RANDOM backbone weights (backbone.pretrained=false): throughput and memory only, anomaly scores meaningless"
            if any(r["weights"] == "random" for r in ok) else "pretrained backbone weights")
    results["note"] = note
    nn_note = ("faiss GPU index (nn_backend=auto uses it on CUDA)" if faiss_gpu_available()
               else "no faiss GPU build: nearest-neighbour search on CUDA ran on the torch backend")
    results["nn_search"] = nn_note
    print(f"\nGPU set on {results['device']}, torch {torch.__version__}, {WORKERS} loader workers; {note}; {nn_note}; "
          f"{results['total_seconds']:.0f} s in all\n")
    print(f"{'method':<12} {'test imgs':>9} {'img/s model':>12} {'img/s e2e':>10} {'e2e/model':>10} {'start-up 64':>12} {'fit s':>8} "
          f"{'peak GPU fit GiB':>17} {'peak GPU score GiB':>19} {'bank MiB':>9}")
    for r in results.get("methods", []):
        if "error" in r:
            print(f"{r['method']:<12} FAILED: {r['error'][:120]}")
            continue
        print(f"{r['method']:<12} {r['n_test']:>9} {r['images_per_s']:>12.1f} {r['end_to_end_images_per_s']:>10.1f} "
              f"{r['end_to_end_fraction_of_model']:>10.0%} {r[f'startup_{STARTUP_IMAGES}_fraction_of_model']:>12.0%} "
              f"{r['fit_s']:>8.1f} {gib(r['peak_gpu_fit_bytes']):>17} {gib(r['peak_gpu_predict_bytes']):>19} {r['memory_bank_bytes'] / 2**20:>9.1f}")
    print(f"(e2e: second pass of persistent loader workers; start-up 64: a fresh loader over {STARTUP_IMAGES} images, e2e/model)")
    write(output, results)
    print(f"written {output}")


def write(output: Path, results: dict, **extra) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        **results, "torch": torch.__version__, "python": platform.python_version(), **extra,
        "machine": {"cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
