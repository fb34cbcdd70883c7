"""GPU throughput and peak GPU memory of every method, in one process.

    python benchmarks/bench_gpu.py                                   # WRN50-2 with random weights
    python benchmarks/bench_gpu.py backbone=efficientnet_lite0       # real offline weights
    python benchmarks/bench_gpu.py --methods patchcore,padim --set cfa:method.epochs=5

Per method: fit on synthetic 256 px images (resize 256, centre crop 224, generated here: no data
needed), one warm-up batch, then the timed scoring of the test set: model-only and end-to-end
images/s, and peak GPU memory (torch allocator) during fit and during scoring. A method that fails
is reported and the others go on. Writes benchmarks/results/gpu.json and prints a table.

The default backbone is wide_resnet50_2 with backbone.pretrained=false: random weights give the
papers' network cost but meaningless anomaly scores, so these figures are throughput and memory
only. The script says so in its output.
"""

from __future__ import annotations

import argparse
import json
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

from adbench.config import conf_dir  # noqa: E402
from adbench.data.dataset import ImageDataset  # noqa: E402
from adbench.methods import available_methods  # noqa: E402
from adbench.config.build import build_backbone, build_method, resolve_device  # noqa: E402
from adbench.methods.scoring import score_batches  # noqa: E402
from adbench.runner import load_data, loader  # noqa: E402
from adbench.data.transforms import Transform  # noqa: E402

SKIP = {"ensemble"}  # needs a list of members
DEFAULTS = ["backbone=wide_resnet50_2", "backbone.pretrained=false", "dataset=synthetic", "dataset.size=256",
            "dataset.resize=256", "dataset.crop=224", "dataset.n_train=64", "dataset.n_test=64", "device=cuda"]
# PaDiM's paper setting for WRN50-2: 550 of 1792 channels; CFA++ takes the uncropped 256 px input (its two views are 224 px)
PER_METHOD_DEFAULTS = {"padim": ["method.dim=550"], "cfa_plus": ["dataset.crop=256"]}


def gib(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**30:.2f}"


def _sync_and_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def measure(cfg, device: torch.device) -> dict:
    """Fit, warm up, then time the scoring of the test set; peak GPU memory of each phase."""
    split = load_data(cfg)
    backbone = build_backbone(cfg.backbone, list(cfg.method.layers))
    method = build_method(cfg.method, backbone, device, cfg.backbone)
    transform = Transform(cfg.dataset.resize, cfg.dataset.crop, backbone.mean, backbone.std)
    train, test = ImageDataset(split.train, transform), ImageDataset(split.test, transform)
    test_batches = list(loader(test, cfg))  # decoded once: the timing below is the model's, not PNG decoding

    _sync_and_reset(device)
    start = time.perf_counter()
    method.fit(loader(train, cfg))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    fit_s = time.perf_counter() - start
    peak_fit = _peak(device)

    method.predict(test_batches[0]["image"])  # warm-up: kernels, allocator, cuDNN choices
    _sync_and_reset(device)
    out = score_batches(method, test_batches)
    return {
        "images_per_s": out.model_images_per_s,
        "end_to_end_images_per_s": out.end_to_end_images_per_s,
        "fit_s": fit_s,
        "peak_gpu_fit_bytes": peak_fit,
        "peak_gpu_predict_bytes": _peak(device),
        "memory_bank_bytes": int(method.memory_bank_bytes),
        "memory_bank_shape": list(method.memory_bank_shape),
        "n_train": len(train),
        "n_test": len(test),
        "backbone": backbone.name,
        "weights": backbone.weights_source,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides after the defaults: " + " ".join(DEFAULTS))
    parser.add_argument("--methods", default=None, help="comma-separated (default: every available method but ensemble)")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD:KEY=VALUE", help="an override for one method only")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "gpu.json"))
    args = parser.parse_args(argv)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        base = compose(config_name="config", overrides=[*DEFAULTS, *args.overrides])
    if base.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs CUDA (torch.cuda.is_available() is False); device=cpu gives a CPU dry run")
    methods = args.methods.split(",") if args.methods else [m for m in available_methods() if m not in SKIP]
    per_method = {m: list(v) for m, v in PER_METHOD_DEFAULTS.items()}
    for item in args.set:
        method, _, override = item.partition(":")
        per_method.setdefault(method, []).append(override)

    results, output = [], Path(args.output)
    device_name = torch.cuda.get_device_name(0) if base.device.startswith("cuda") else f"cpu ({platform.processor() or platform.machine()})"
    with tempfile.TemporaryDirectory(prefix="adbench-gpu-") as data:
        for method in methods:
            overrides = [*DEFAULTS, f"dataset.root={data}", *args.overrides, f"method={method}", *per_method.get(method, [])]
            print(f"--- {method}: {' '.join(overrides)}", flush=True)
            try:
                with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
                    cfg = compose(config_name="config", overrides=overrides)
                torch.manual_seed(cfg.seed)
                row = {"method": method, "overrides": overrides, **measure(cfg, resolve_device(cfg.device))}
            except Exception as exc:  # noqa: BLE001 - report and go on with the next method
                traceback.print_exc()
                row = {"method": method, "overrides": overrides, "error": f"{type(exc).__name__}: {exc}"}
            finally:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            results.append(row)
            write(output, device_name, base, results, partial=True)  # a killed run still leaves what it measured

    ok = [r for r in results if "error" not in r]
    random_weights = any(r["weights"] == "random" for r in ok)
    note = ("RANDOM backbone weights (backbone.pretrained=false): throughput and memory only, anomaly scores meaningless"
            if random_weights else "pretrained backbone weights")
    first = ok[0] if ok else {}
    print(f"\nGPU benchmark on {device_name}, torch {torch.__version__}; backbone {first.get('backbone', '?')} ({note}); "
          f"{base.dataset.crop} px, batch {base.batch_size}, {first.get('n_train', '?')} train / {first.get('n_test', '?')} test synthetic images\n")
    print(f"{'method':<12} {'img/s model':>12} {'img/s e2e':>10} {'fit s':>8} {'peak GPU fit GiB':>17} {'peak GPU score GiB':>19} {'bank MiB':>9}")
    for r in results:
        if "error" in r:
            print(f"{r['method']:<12} FAILED: {r['error'][:120]}")
            continue
        print(f"{r['method']:<12} {r['images_per_s']:>12.1f} {r['end_to_end_images_per_s']:>10.1f} {r['fit_s']:>8.1f} "
              f"{gib(r['peak_gpu_fit_bytes']):>17} {gib(r['peak_gpu_predict_bytes']):>19} {r['memory_bank_bytes'] / 2**20:>9.1f}")
    try:
        import faiss  # noqa: F401

        nn_note = "faiss installed (nn_backend=auto uses it; its GPU index only with a faiss GPU build)"
    except ImportError:
        nn_note = "faiss not installed: nearest-neighbour search ran on the torch backend"
    print(f"\n{note}. {nn_note}.")
    write(output, device_name, base, results, note=note, nn_search=nn_note)
    print(f"written {output}")


def write(output: Path, device_name: str, base, results: list[dict], **extra) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "device": device_name, "torch": torch.__version__, "python": platform.python_version(), **extra,
        "image_size": int(base.dataset.crop), "batch_size": int(base.batch_size), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "methods": results,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
