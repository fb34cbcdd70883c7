"""PatchCore's exact reduced-rank bank against the literal embed_dim-wide one, same run, same data.

Both paths fit on the same decoded training batches and score the same decoded test batches
(``reduce_rank=false`` and the default): coreset picks shared, image scores and anomaly maps
(max relative difference), bank bytes, and the model time of ``predict`` over the test set, the two
models taking turns on every batch for ``--passes`` passes (so the ratio, not the absolute figure, is
what other processes on the machine cannot bias much).

    ADBENCH_DATA=../shared/data python benchmarks/bench_reduced_rank.py dataset=mvtec dataset.category=bottle
    python benchmarks/bench_reduced_rank.py                               # ELPV (the package's images)
    python benchmarks/bench_reduced_rank.py method=patchcore_1pct dataset=elpv

Writes benchmarks/results/reduced_rank_<dataset>_<category>_<ratio>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from _common import save

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adbench.api import compose_config
from adbench.features import coreset
from adbench.pipeline import build_pipeline


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(|a|, |b|), over the elements (0 where both are 0)."""
    scale = np.maximum(np.abs(a), np.abs(b))
    return float(np.max(np.where(scale > 0, np.abs(a - b) / np.where(scale > 0, scale, 1), 0)))


def fit(method, train: list[dict]) -> dict:
    """Fit; the coreset's picks are recorded on the way."""
    picked = {}
    inner = coreset.greedy_coreset

    def recording(points, n_select, seed=0, progress=True):
        picked["picks"] = inner(points, n_select, seed, progress)
        return picked["picks"]

    coreset.greedy_coreset = recording
    try:
        began = time.perf_counter()
        method.fit(train)
        fit_s = time.perf_counter() - began
    finally:
        coreset.greedy_coreset = inner
    return {"fit_s": fit_s, "picks": picked.get("picks"), "bank_bytes": method.memory_bank_bytes,
            "bank_shape": list(method.memory_bank_shape), "fit_info": dict(method.fit_info)}


def score_interleaved(methods: dict, test: list[dict], passes: int) -> dict:
    """Model time of ``predict`` per method, the methods taking turns on every batch (their order swapped each
    pass), so that a change in the machine's load falls on both alike. Scores and maps from the first pass."""
    for method in methods.values():
        method.predict(test[0]["image"])  # warm-up
    seconds = {name: [0.0] * passes for name in methods}
    outputs = {name: ([], []) for name in methods}
    for p in range(passes):
        names = list(methods) if p % 2 == 0 else list(methods)[::-1]
        for batch in test:
            for name in names:
                began = time.perf_counter()
                prediction = methods[name].predict(batch["image"])
                seconds[name][p] += time.perf_counter() - began
                if p == 0:
                    outputs[name][0].append(prediction.image_scores)
                    outputs[name][1].append(prediction.maps)
    return {name: {"score_s": sum(seconds[name]), "pass_s": seconds[name], "scores": np.concatenate(outputs[name][0]),
                   "maps": np.concatenate(outputs[name][1])} for name in methods}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: method=patchcore dataset=elpv)")
    parser.add_argument("--passes", type=int, default=3, help="scoring passes over the test set (default 3)")
    args = parser.parse_args()
    overrides = ["method=patchcore", "dataset=elpv", "device=cpu", *args.overrides]
    cfg = compose_config(overrides)
    runs, methods, batches = {}, {}, []
    for name, reduce in (("wide", False), ("reduced", True)):
        cfg.method.reduce_rank = reduce
        pipeline = build_pipeline(cfg)  # seeded as a run is
        if not batches:  # decoded once for both paths
            batches = [list(pipeline.loader(pipeline.train)), list(pipeline.loader(pipeline.test))]
        methods[name] = pipeline.method
        runs[name] = fit(pipeline.method, batches[0])
    load = os.getloadavg()[0]
    for name, scored in score_interleaved(methods, batches[1], args.passes).items():
        runs[name].update(scored)
        print(f"{name}: fit {runs[name]['fit_s']:.1f} s, scoring {args.passes * len(scored['scores']) / scored['score_s']:.2f} img/s, "
              f"bank {runs[name]['bank_shape']}", flush=True)
    wide, reduced = runs["wide"], runs["reduced"]
    shared = (len(set(wide["picks"].tolist()) & set(reduced["picks"].tolist())) / len(wide["picks"])
              if wide["picks"] is not None else 1.0)
    n_test = len(wide["scores"])
    result = {
        "overrides": overrides,
        "n_train": len(pipeline.train), "n_test": n_test, "passes": args.passes, "load_1min_before_scoring": load,
        "wide": {"bank_shape": wide["bank_shape"], "bank_mib": wide["bank_bytes"] / 2**20, "fit_s": wide["fit_s"],
                 "scoring_images_per_s": args.passes * n_test / wide["score_s"]},
        "reduced": {"bank_shape": reduced["bank_shape"], "bank_mib": reduced["bank_bytes"] / 2**20, "fit_s": reduced["fit_s"],
                    "scoring_images_per_s": args.passes * n_test / reduced["score_s"], "fit_info": reduced["fit_info"]},
        "coreset_picks_shared": shared,
        "image_scores_max_relative_difference": relative_difference(wide["scores"], reduced["scores"]),
        "maps_max_relative_difference": relative_difference(wide["maps"], reduced["maps"]),
        "bank_ratio": wide["bank_bytes"] / reduced["bank_bytes"],
        "scoring_speedup": wide["score_s"] / reduced["score_s"],
        "scoring_speedup_per_pass": [w / r for w, r in zip(wide["pass_s"], reduced["pass_s"])],
        "targets": {"image_scores_max_relative_difference": 1e-4, "maps_max_relative_difference": 1e-4,
                    "coreset_picks_shared": 0.999, "bank_ratio": 5.0, "scoring_speedup": 4.0},
    }
    for key, target in result["targets"].items():
        print(f"{key}: {result[key]:.6g} (target {'<=' if 'difference' in key else '>='} {target:g})")
    tag = f"{cfg.dataset.name}_{cfg.dataset.category}_{cfg.method.coreset_ratio:g}"
    print(save(f"reduced_rank_{tag}", result))


if __name__ == "__main__":
    main()
