"""Peak memory of a fit on a large training set against the size of its features.

2,000 training images: MVTec bottle's 209 good images repeated with light augmentation (flips, a
brightness change: every copy a different image), default config (Lite0, 224 px). Each fit runs in
its own process; reported: its peak RSS, the RSS before the fit (interpreter, torch, backbone, one
warm-up batch: "backbone" below), and the bytes of the training features the method extracts
(float32). Target (PatchCore): peak <= 1.5 x features + backbone. Configurations:

- ``patchcore``: PatchCore-1%, features in memory (the default ``fit_memory``: half the available RAM);
- ``patchcore_spilled``: the same with ``fit_memory`` = 1 GiB: the features go to a temporary file;
- ``spade``: its gallery (every pyramid map of every image) is the memory bank, held once;
- ``reconpatch``: ``epochs=0`` (the storage and projection path without the training).

    ADBENCH_DATA=../shared/data flock /tmp/adbench-cpu.lock python benchmarks/bench_fit_memory.py [--images 2000] [--only patchcore]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONFIGS = {
    "patchcore": ["method=patchcore", "method.coreset_ratio=0.01"],
    "patchcore_spilled": ["method=patchcore", "method.coreset_ratio=0.01", f"fit_memory={2**30}"],
    "spade": ["method=spade"],
    "reconpatch": ["method=reconpatch", "method.epochs=0"],
}


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(name: str, images: int) -> dict:
    """One fit in this process; its memory figures."""
    import torch

    from adbench.api import compose_config
    from adbench.pipeline import build_pipeline

    overrides = ["dataset=mvtec", "dataset.category=bottle", "device=cpu", *CONFIGS[name]]
    pipeline = build_pipeline(compose_config(overrides))
    cfg, method, backbone = pipeline.cfg, pipeline.method, pipeline.backbone
    train = Augmented(pipeline.train, images)
    batches = pipeline.loader(train)
    with torch.no_grad():
        backbone(next(iter(batches))["image"])  # warm-up: the backbone's working memory counts as "backbone"
    before = peak_rss()
    began = time.perf_counter()
    method.fit(batches, cfg.get("fit_memory"))
    seconds = time.perf_counter() - began
    peak = peak_rss()
    info = method.fit_info
    if name == "spade":
        features = int(method.gallery.numel() * 4 + method.image_bank.numel() * 4)
    else:
        dims = int(cfg.method.embed_dim) if cfg.method.get("embed_dim") else sum(backbone.channels[layer] for layer in cfg.method.layers)
        features = int(info["patches"]) * dims * 4
    return {
        "overrides": overrides, "images": len(train), "fit_seconds": seconds, "features_bytes": features,
        "rss_before_fit_bytes": before, "peak_rss_bytes": peak,
        "peak_over_features_plus_backbone": (peak - before) / features,
        "target": "peak <= 1.5 x features + backbone" if name.startswith("patchcore") else None,
        "fit_info": {k: v for k, v in info.items() if isinstance(v, (int, float, bool, str))},
    }


class Augmented:
    """``n`` images from ``base`` repeated: copy r of image i is flipped on odd r and brightened by 0.05 (r mod 5 - 2)."""

    def __init__(self, base, n: int):
        self.base, self.n = base, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        copy, i = divmod(index, len(self.base))
        item = dict(self.base[i])
        image = item["image"].flip(-1) if copy % 2 else item["image"]
        item["image"] = image * (1 + 0.05 * (copy % 5 - 2))
        return item


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(CONFIGS)}")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.images)), flush=True)
        return
    if not os.environ.get("ADBENCH_DATA"):
        raise SystemExit("set ADBENCH_DATA to the folder holding mvtec/bottle (e.g. ../shared/data)")
    from _common import save

    results = {}
    for name in (args.only.split(",") if args.only else CONFIGS):
        print(f"--- {name}", flush=True)
        done = subprocess.run([sys.executable, __file__, "--child", name, "--images", str(args.images)], capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            print(done.stderr[-3000:])
            results[name] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
            continue
        results[name] = r = json.loads(lines[-1][len("RESULT "):])
        print(f"features {r['features_bytes'] / 2**30:.2f} GiB, RSS before fit {r['rss_before_fit_bytes'] / 2**30:.2f} GiB, "
              f"peak {r['peak_rss_bytes'] / 2**30:.2f} GiB: (peak - before) / features = {r['peak_over_features_plus_backbone']:.2f}, "
              f"fit {r['fit_seconds']:.0f} s", flush=True)
    print(save("fit_memory", results))


if __name__ == "__main__":
    main()
