"""Feature cache: a sweep of every available method on one class, without and with the cache.

    python benchmarks/bench_feature_cache.py                       # MVTec bottle ($ADBENCH_DATA), all methods
    python benchmarks/bench_feature_cache.py --methods patchcore,padim,spade,gaussian_ad \\
        --set cfa:method.epochs=2 backbone=wide_resnet50_2 backbone.pretrained=false

The methods run one after the other in this process, twice: cache off, then cache on with an empty
cache directory, so the first method pays feature extraction and every later one reads it. Per
method: wall time of the whole run, fit time, images that went through the backbone network, and
whether the metrics agree between the two passes. Writes benchmarks/results/feature_cache.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from adbench.config import conf_dir
from adbench.features.backbones import Backbone
from adbench.methods import available_methods
from adbench.runner import run

SKIP = {"ensemble"}  # needs a list of members, not a method of its own in a sweep


class ForwardCounter:
    """Counts images through ``Backbone.forward`` (the network itself, cached or not)."""

    def __init__(self) -> None:
        self.images = 0
        self._original = Backbone.forward

    def __enter__(self) -> ForwardCounter:
        original, counter = self._original, self

        def counted(backbone: Backbone, images):
            counter.images += len(images)
            return original(backbone, images)

        Backbone.forward = counted
        return self

    def __exit__(self, *exc) -> None:
        Backbone.forward = self._original


def methods_to_run(requested: str | None) -> list[str]:
    names = requested.split(",") if requested else [m for m in available_methods() if m not in SKIP]
    missing = [m for m in names if not (REPO / "conf" / "method" / f"{m}.yaml").is_file()]
    if missing:
        raise SystemExit(f"no conf/method/*.yaml for: {', '.join(missing)}")
    return names


def one_pass(methods: list[str], overrides: list[str], per_method: dict[str, list[str]], results: Path, cache_dir: Path | None) -> list[dict]:
    rows = []
    for method in methods:
        cfg_overrides = [f"method={method}", *overrides, *per_method.get(method, []), f"results_dir={results}", "figures=0", "force=true"]
        if cache_dir is not None:
            cfg_overrides.append(f"cache_dir={cache_dir}")
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            cfg = compose(config_name="config", overrides=cfg_overrides)
        start = time.perf_counter()
        with ForwardCounter() as counter:
            try:
                record = run(cfg)
            except Exception as exc:  # noqa: BLE001 - one failing method must not hide the others' figures
                print(f"{method}: FAILED: {type(exc).__name__}: {exc}")
                rows.append({"method": method, "error": f"{type(exc).__name__}: {exc}"})
                continue
        rows.append({
            "method": method,
            "wall_s": time.perf_counter() - start,
            "fit_s": record["fit_seconds"],
            "backbone_images": counter.images,
            "n_images": record["n_train"] + record["n_test"],
            "metrics": record["metrics"],
            "feature_cache": record["feature_cache"],
            "backbone": record["backbone"],
            "weights": record["weights"],
            "dataset": f"{record['dataset']}/{record['category']}",
            "image_size": record["image_size"],
        })
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (default: dataset=mvtec dataset.category=bottle)")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every available method but ensemble)")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD:KEY=VALUE", help="an override for one method only")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "feature_cache.json"))
    args = parser.parse_args(argv)
    methods = methods_to_run(args.methods)
    overrides = args.overrides or ["dataset=mvtec", "dataset.category=bottle"]
    per_method: dict[str, list[str]] = {}
    for item in args.set:
        method, _, override = item.partition(":")
        per_method.setdefault(method, []).append(override)

    with tempfile.TemporaryDirectory(prefix="adbench-cache-bench-") as tmp:
        plain = one_pass(methods, overrides, per_method, Path(tmp) / "plain", None)
        cached = one_pass(methods, overrides, per_method, Path(tmp) / "cached", Path(tmp) / "cache")

    ok = [(p, c) for p, c in zip(plain, cached) if "error" not in p and "error" not in c]
    if not ok:
        raise SystemExit("every method failed")
    first = ok[0][0]
    print(f"\nfeature cache on {first['dataset']} ({first['n_images']} images), {first['backbone']} ({first['weights']}), {first['image_size']} px\n")
    print(f"{'method':<12} {'wall s off':>10} {'wall s on':>10} {'fit s off':>10} {'fit s on':>10} {'backbone imgs off':>18} {'on':>6}  metrics equal")
    for p, c in ok:
        same = all(p["metrics"][k] == c["metrics"][k] or abs((p["metrics"][k] or 0) - (c["metrics"][k] or 0)) < 1e-6 for k in p["metrics"])
        print(f"{p['method']:<12} {p['wall_s']:>10.1f} {c['wall_s']:>10.1f} {p['fit_s']:>10.1f} {c['fit_s']:>10.1f} "
              f"{p['backbone_images']:>18} {c['backbone_images']:>6}  {'yes' if same else 'NO'}")
    total = {name: sum(r["wall_s"] for r in rows if "error" not in r) for name, rows in (("off", plain), ("on", cached))}
    images = {name: sum(r["backbone_images"] for r in rows if "error" not in r) for name, rows in (("off", plain), ("on", cached))}
    print(f"\nsweep of {len(ok)} methods: {total['off']:.1f} s without the cache, {total['on']:.1f} s with it "
          f"({total['off'] / total['on']:.2f}x); images through the backbone: {images['off']} vs {images['on']} "
          f"(the class has {first['n_images']} images)")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"overrides": overrides, "per_method": per_method, "without_cache": plain, "with_cache": cached,
                                  "total_wall_s": total, "backbone_images": images}, indent=2, default=str) + "\n")
    print(f"written {output}")


if __name__ == "__main__":
    main()
