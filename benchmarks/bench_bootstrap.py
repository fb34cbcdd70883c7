"""Test-set uncertainty on MVTec bottle: all 95% intervals (1000 stratified resamples) from PatchCore's test maps.
Target: <= 10 s on 2 CPU cores, binning included.

Fits PatchCore (the default config: EfficientNet-Lite0, 224 px) on bottle, scores its 83 test images (not
timed), then times, best of 3:
- ``table_s``: the per-image table (the score grid and every image's and defect region's histograms);
- ``intervals_s``: the intervals of all seven metrics from that table (BCa bootstrap + jackknife, score interval);
- ``assess_s``: everything a record gets: exact metrics, per-defect breakdown, table and intervals;
- ``exact_resample_s``: one resample evaluated exactly on the resampled full maps (pixel AUROC, AP,
  F1-max and AUPRO), times 1000 for what an unbinned bootstrap would take.
Also records how far the table's binned pixel metrics are from the exact ones, and the table's size.

    ADBENCH_DATA=../shared/data python benchmarks/bench_bootstrap.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import save

from adbench.metrics import StratifiedBootstrap, assess, confidence_intervals, evaluate, table_metrics
from adbench.metrics.per_image import per_image_table, write_per_image

TARGET_S = 10.0


def bottle_test_maps() -> dict:
    """PatchCore (default config) fitted on bottle: test labels, scores, maps, masks, paths, defect types."""
    from adbench.api import compose_config
    from adbench.data.splits import data_base
    from adbench.pipeline import fit_and_score

    pipeline, out = fit_and_score(compose_config(["method=patchcore", "dataset=mvtec", "dataset.category=bottle", "device=cpu"]))
    base, test = data_base(pipeline.split), pipeline.test.samples
    return {"labels": out.labels.astype(bool), "scores": out.scores, "maps": out.maps, "masks": out.masks,
            "paths": [s.image.relative_to(base).as_posix() for s in test], "defects": [s.defect for s in test]}


def best_of(runs: int, fn) -> tuple[float, object]:
    times, value = [], None
    for _ in range(runs):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    d = bottle_test_maps()
    labels, scores, maps, masks = d["labels"], d["scores"], d["maps"], d["masks"]
    bootstrap = StratifiedBootstrap()
    table_s, table = best_of(3, lambda: per_image_table(d["paths"], labels, d["defects"], scores, maps, masks))
    intervals_s, intervals = best_of(3, lambda: confidence_intervals(table))
    assess_s, _ = best_of(3, lambda: assess(labels, scores, d["paths"], d["defects"], masks, maps))
    counts = bootstrap.weights(labels)[0]
    exact_resample_s, _ = best_of(1, lambda: evaluate(np.repeat(labels, counts), np.repeat(scores, counts), np.repeat(masks, counts, 0), np.repeat(maps, counts, 0)))
    exact, binned = evaluate(labels, scores, masks, maps), table_metrics(table)
    with tempfile.TemporaryDirectory() as tmp:
        size = write_per_image(Path(tmp) / "t.per_image.parquet", table).stat().st_size
    payload = {
        "setting": {"category": "bottle", "method": "patchcore (default config)", "test_images": len(labels), "map_size": list(maps.shape[1:]),
                    "bins": len(table.attrs["bin_edges"]) - 1, "resamples": bootstrap.resamples},
        "table_s": table_s,
        "intervals_s": intervals_s,
        "all_intervals_s": table_s + intervals_s,
        "assess_s": assess_s,
        "target_s": TARGET_S,
        "exact_resample_s": exact_resample_s,
        "exact_bootstrap_estimate_s": exact_resample_s * bootstrap.resamples,
        "per_image_bytes": size,
        "metrics_exact": exact,
        "metrics_binned_minus_exact": {m: binned[m] - exact[m] for m in exact if exact[m] is not None},
        "ci95": intervals,
    }
    print(f"bottle, {len(labels)} test images: table {table_s:.2f} s + intervals {intervals_s:.2f} s = {table_s + intervals_s:.2f} s "
          f"(target <= {TARGET_S:.0f} s); whole assessment {assess_s:.2f} s; unbinned bootstrap ~{exact_resample_s * bootstrap.resamples:.0f} s; "
          f"table {size / 1024:.0f} KB")
    print("binned - exact:", {m: f"{v:+.1e}" for m, v in payload["metrics_binned_minus_exact"].items()})
    print(save("bootstrap", payload))


if __name__ == "__main__":
    main()
