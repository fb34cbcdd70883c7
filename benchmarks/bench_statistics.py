"""Do adbench's statistics hold where anomaly-detection benchmarks sit? Simulation, written to
benchmarks/results/statistics.json (each part merged into the file, so parts can run separately).

- ``coverage``: how often the 95% interval of :func:`adbench.metrics.confidence_intervals` covers the
  truth, over true AUROC in {0.75, 0.9, 0.97, 0.99, 0.995, 0.999} and test sizes (normal, anomalous) in
  {(20, 63), (26, 71), (147, 313), (500, 500)}. Image AUROC: binormal scores (normal N(0, 1), anomalous
  N(δ, 1), truth Φ(δ/√2)), plus a robustness row with anomalous scores N(δ, 0.5²). Pixel metrics: 10x10
  maps, each image with its own offset b ~ N(0, 0.5²), anomalous images with one or two rectangular
  defect regions (2-4 px a side) each with its own offset c ~ N(0, 0.5²); pixel score = b (+ μ + c on
  defects) + N(0, 1), rounded to steps of 0.1. The table's grid has one bin per step, so the binned
  metrics are exact, and the truth (the population value of each metric: normal pixels N(0, 1.25),
  defect pixels N(μ, 1.5), both rounded) is computed from those two distributions; μ is set so that the
  pixel AUROC is the target. Also the share of zero-width intervals.
- ``ties``: family-wise error of the "significantly worse" marks (:func:`adbench.results.stats.tie_test`)
  when 7 or 12 configurations are equally good (scores = shared signal + own noise, so paired; image AUROC
  through DeLong, pixel AUROC and AUPRO through the bootstrap: maps sharing the image and region offsets and
  half the pixel noise), and the power to mark a configuration 0.02 AUROC worse than the others at n = (147, 313).

    python benchmarks/bench_statistics.py --part coverage --sizes 20x63 26x71
    python benchmarks/bench_statistics.py --part ties
    python benchmarks/bench_statistics.py --quick        # every part with few repetitions (a smoke run, not saved)
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
from _common import RESULTS, machine
from scipy import optimize, stats

from adbench.metrics import binned
from adbench.metrics.intervals import confidence_intervals, pooled_intervals, wilson
from adbench.metrics.per_image import FORMAT, pixel_histograms
from adbench.metrics.weighted import PIXEL_METRICS

TRUTHS = (0.75, 0.9, 0.97, 0.99, 0.995, 0.999)
SIZES = ((20, 63), (26, 71), (147, 313), (500, 500))
PIXEL_TIE_METRICS = ("pixel_auroc", "aupro")
TARGET = (0.93, 0.975)  # coverage wanted where the truth is below 0.999
STEP, SIDE, IMAGE_SD, REGION_SD = 0.1, 10, 0.5, 0.5
OUTPUT = RESULTS / "statistics.json"


def binormal(rng: np.random.Generator, n_normal: int, n_anomalous: int, truth: float, sd: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    labels = np.r_[np.zeros(n_normal, bool), np.ones(n_anomalous, bool)]
    shift = np.sqrt(1 + sd**2) * stats.norm.ppf(truth)
    return labels, np.where(labels, shift + sd * rng.normal(size=labels.size), rng.normal(size=labels.size))


def image_table(labels: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    table = pd.DataFrame({"path": [str(i) for i in range(labels.size)], "label": labels.astype(np.int8),
                          "defect": np.where(labels, "x", "good"), "score": scores})
    table.attrs = {"format": FORMAT, "pro_limit": 0.3}
    return table


# --- the pixel model ------------------------------------------------------------------------------------------

class PixelModel:
    """Rounded pixel scores on a fixed grid (one bin per value) and the population truth of every pixel metric."""

    def __init__(self, truth_auroc: float):
        self.mu = optimize.brentq(lambda mu: self.truth(mu, 0.5)["pixel_auroc"] - truth_auroc, 0.0, 12.0, xtol=1e-10)
        self.levels = np.arange(np.floor(-6.0 / STEP), np.ceil((self.mu + 7.0) / STEP) + 1) * STEP
        self.edges = np.r_[self.levels - STEP / 2, self.levels[-1] + STEP / 2]

    @staticmethod
    def bin_probabilities(mean: float, sd: float, mu: float) -> np.ndarray:
        levels = np.arange(np.floor(-6.0 / STEP), np.ceil((mu + 7.0) / STEP) + 1) * STEP
        cdf = stats.norm.cdf(np.r_[-np.inf, levels[:-1] + STEP / 2, np.inf], mean, sd)
        return np.diff(cdf)

    @classmethod
    def truth(cls, mu: float, defect_share: float) -> dict[str, float]:
        """Population value of each pixel metric; ``defect_share``: defect pixels / all pixels (matters for AP and F1)."""
        normal = cls.bin_probabilities(0.0, np.sqrt(1 + IMAGE_SD**2), mu)
        defect = cls.bin_probabilities(mu, np.sqrt(1 + IMAGE_SD**2 + REGION_SD**2), mu)
        pos, neg = 1e12 * defect_share * defect, 1e12 * (1 - defect_share) * normal  # as counts: F1-max floors its denominator at 1
        return {"pixel_auroc": float(binned.auroc(pos, neg)), "pixel_ap": float(binned.average_precision(pos, neg)),
                "pixel_f1_max": float(binned.f1_max(pos, neg)),
                "aupro": float(binned.aupro(normal, binned.above(defect), np.array(1.0)))}

    def sample(self, rng: np.random.Generator, n_normal: int, n_anomalous: int, configurations: int = 1) -> list[pd.DataFrame]:
        """One table per configuration on the same images: the image and region offsets and half the pixel noise's
        variance shared, the other half each configuration's own (one configuration: all of it its own); every
        configuration has the same population values."""
        n = n_normal + n_anomalous
        labels = np.arange(n) >= n_normal
        masks = np.zeros((n, SIDE, SIDE), bool)
        shared = IMAGE_SD * rng.normal(size=(n, 1, 1)) + (np.sqrt(0.5) * rng.normal(size=masks.shape) if configurations > 1 else 0.0)
        shared = np.broadcast_to(shared, masks.shape).copy()
        for i in np.flatnonzero(labels):
            for left in ((0, 6) if rng.random() < 0.5 else (rng.choice([0, 6]),)):  # columns 0-3 and 6-9: regions never touch
                h, w = rng.integers(2, 5, size=2)
                top, x = rng.integers(0, SIDE - h + 1), left + rng.integers(0, 4 - w + 1)
                masks[i, top:top + h, x:x + w] = True
                shared[i, top:top + h, x:x + w] += self.mu + REGION_SD * rng.normal()
        own_sd = np.sqrt(0.5) if configurations > 1 else 1.0
        tables = []
        for _ in range(configurations):
            maps = np.round((shared + own_sd * rng.normal(size=masks.shape)) / STEP) * STEP
            normal, regions = pixel_histograms(maps, masks, self.edges)
            table = image_table(labels, maps.reshape(n, -1).max(1))
            table["normal_hist"] = list(normal.astype(np.uint32))
            table["region_hists"] = [list(r.astype(np.uint32)) for r in regions]
            table.attrs["bin_edges"] = self.edges.tolist()
            tables.append(table)
        return tables


def defect_share(n_normal: int, n_anomalous: int) -> float:
    """Expected defect pixels / all pixels: 1.5 regions of 3 x 3 pixels on average per anomalous 10 x 10 image."""
    return n_anomalous / (n_normal + n_anomalous) * 1.5 * 9 / SIDE**2


def coverage(reps: int, sizes: tuple[tuple[int, int], ...], truths: tuple[float, ...], seed: int = 0) -> list[dict]:
    rows = []
    for n_normal, n_anomalous in sizes:
        share = defect_share(n_normal, n_anomalous)
        for truth in truths:
            rng = np.random.default_rng([seed, n_normal, n_anomalous, int(truth * 1e4)])
            start = time.perf_counter()
            covered: dict[str, list[bool]] = {}
            zero: dict[str, int] = {}
            widths: dict[str, list[float]] = {}

            def score(name: str, value: float, interval: list[float] | None) -> None:
                covered.setdefault(name, []).append(interval is not None and interval[0] <= value <= interval[1])
                zero[name] = zero.get(name, 0) + (interval is None or interval[1] <= interval[0])
                widths.setdefault(name, []).append(np.nan if interval is None else interval[1] - interval[0])

            model = PixelModel(truth)
            pixel_truth = PixelModel.truth(model.mu, share)
            for r in range(reps):
                for name, sd in (("image_auroc", 1.0), ("image_auroc (anomalous sd 0.5)", 0.5)):
                    labels, scores = binormal(rng, n_normal, n_anomalous, truth, sd)
                    score(name, truth, confidence_intervals(image_table(labels, scores), seed=r)["image_auroc"])
                found = pooled_intervals(model.sample(rng, n_normal, n_anomalous), seed=r, metrics=PIXEL_METRICS)
                for metric in PIXEL_METRICS:
                    score(metric, pixel_truth[metric], found[metric])
            for name in covered:
                value = truth if name.startswith("image") else pixel_truth[name]
                rows.append({"metric": name, "truth": round(value, 5), "target_auroc": truth, "n_normal": n_normal, "n_anomalous": n_anomalous,
                             "reps": reps, "coverage": float(np.mean(covered[name])), "zero_width": zero[name],
                             "mean_width": float(np.nanmean(widths[name]))})
            print(f"({n_normal}, {n_anomalous}) truth {truth}: " + ", ".join(f"{r['metric']} {r['coverage']:.3f}" for r in rows[-len(covered):])
                  + f"  [{time.perf_counter() - start:.0f} s]", flush=True)
    return rows


# --- tie marks: family-wise error and power -------------------------------------------------------------------

def correlated_scores(rng: np.random.Generator, labels: np.ndarray, aurocs: list[float]) -> np.ndarray:
    """One scoring per AUROC: shared signal + own noise (equal weights), each with true AUROC as given (binormal)."""
    shared, own = rng.normal(size=labels.size), rng.normal(size=(len(aurocs), labels.size))
    shift = np.sqrt(2) * stats.norm.ppf(np.asarray(aurocs))[:, None]
    return (shared + own) / np.sqrt(2) + shift * labels


def ties(reps: int, seed: int = 0) -> dict:
    from adbench.results.stats import tie_test

    out: dict = {"family_wise_error": [], "power": []}
    cases = [(k, auroc, n) for k in (7, 12) for auroc, n in ((0.73, (20, 63)), (0.99, (20, 63)), (0.95, (147, 313)))]
    for k, auroc, (n_normal, n_anomalous) in cases:
        rng = np.random.default_rng([seed, k, int(auroc * 100)])
        labels = np.r_[np.zeros(n_normal, bool), np.ones(n_anomalous, bool)]
        marked = 0
        for r in range(reps):
            scores = correlated_scores(rng, labels, [auroc] * k)
            result = tie_test([[image_table(labels, s)] for s in scores], "image_auroc", seed=r)
            marked += bool(result.worse.any())
        out["family_wise_error"].append({"configurations": k, "auroc": auroc, "n_normal": n_normal, "n_anomalous": n_anomalous,
                                         "reps": reps, "metric": "image_auroc", "family_wise_error": marked / reps})
        print(f"FWER k={k} AUROC {auroc} n=({n_normal}, {n_anomalous}): {marked / reps:.3f}", flush=True)
    for k in (7, 12):  # the bootstrap path of the tie test (pixel metrics), small test set near the ceiling
        rng = np.random.default_rng([seed, k, 3])
        model, marked = PixelModel(0.97), {m: 0 for m in PIXEL_TIE_METRICS}
        for r in range(reps):
            tables = model.sample(rng, 20, 63, configurations=k)
            for metric in PIXEL_TIE_METRICS:
                marked[metric] += bool(tie_test([[t] for t in tables], metric, seed=r).worse.any())
        for metric in PIXEL_TIE_METRICS:
            out["family_wise_error"].append({"configurations": k, "auroc": 0.97, "n_normal": 20, "n_anomalous": 63, "reps": reps,
                                             "metric": metric, "family_wise_error": marked[metric] / reps})
            print(f"FWER k={k} {metric} (pixel AUROC 0.97) n=(20, 63): {marked[metric] / reps:.3f}", flush=True)
    for k in (2, 7):
        rng = np.random.default_rng([seed, k, 2])
        labels = np.r_[np.zeros(147, bool), np.ones(313, bool)]
        found = 0
        for r in range(reps):
            scores = correlated_scores(rng, labels, [0.95] * (k - 1) + [0.93])
            found += bool(tie_test([[image_table(labels, s)] for s in scores], "image_auroc", seed=r).worse[-1])
        out["power"].append({"configurations": k, "difference": 0.02, "aurocs": [0.95, 0.93], "n_normal": 147, "n_anomalous": 313,
                             "reps": reps, "power": found / reps})
        print(f"power k={k} ΔAUROC 0.02 n=(147, 313): {found / reps:.3f}", flush=True)
    return out


def summary(rows: list[dict]) -> dict:
    """Per metric, where the truth is below 0.999: the coverage range, the cells whose observed coverage is outside the
    target, those where even the simulation's own 95% interval (Wilson's, over the repetitions) misses it, zero-width intervals."""
    out = {}
    for metric in sorted({r["metric"] for r in rows}):
        mine = [r for r in rows if r["metric"] == metric and r["target_auroc"] < 0.999]
        name = [f"AUROC {r['target_auroc']} at ({r['n_normal']}, {r['n_anomalous']}): {r['coverage']:.3f}" for r in mine]
        outside = [n for n, r in zip(name, mine) if not TARGET[0] <= r["coverage"] <= TARGET[1]]
        beyond = [n for n, r in zip(name, mine) if (lambda lo, hi: hi < TARGET[0] or lo > TARGET[1])(*wilson(r["coverage"], r["reps"]))]
        out[metric] = {"coverage_min": min(r["coverage"] for r in mine), "coverage_max": max(r["coverage"] for r in mine),
                       "cells": len(mine), "outside_target": outside, "outside_beyond_monte_carlo_error": beyond,
                       "zero_width": sum(r["zero_width"] for r in rows if r["metric"] == metric),
                       "meets_target": not outside, "meets_target_within_monte_carlo_error": not beyond}
    return out


def merge(part: str, value) -> None:
    saved = json.loads(OUTPUT.read_text()) if OUTPUT.exists() else {}
    if part == "coverage":
        keep = {(r["metric"], r["target_auroc"], r["n_normal"], r["n_anomalous"]) for r in value}
        old = [r for r in saved.get("coverage", []) if (r["metric"], r["target_auroc"], r["n_normal"], r["n_anomalous"]) not in keep]
        value = sorted(old + value, key=lambda r: (r["metric"], r["n_normal"], r["target_auroc"]))
    saved[part] = value
    if saved.get("coverage"):
        saved["summary"] = summary(saved["coverage"])
    saved["targets"] = {"coverage": list(TARGET), "where": "truth below 0.999", "family_wise_error": 0.05, "zero_width": 0}
    saved["machine"] = machine()
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(saved, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["coverage", "ties", "summary", "all"], default="all",
                        help="summary: recompute the saved file's summary from its coverage rows, nothing simulated")
    parser.add_argument("--reps", type=int, default=500, help="repetitions per cell (default 500)")
    parser.add_argument("--sizes", nargs="*", default=[f"{a}x{b}" for a, b in SIZES], help="test sizes as NORMALxANOMALOUS")
    parser.add_argument("--truths", nargs="*", type=float, default=list(TRUTHS))
    parser.add_argument("--quick", action="store_true", help="5 repetitions, nothing saved: checks that the script runs")
    args = parser.parse_args()
    reps = 5 if args.quick else args.reps
    sizes = tuple(tuple(int(x) for x in s.split("x")) for s in args.sizes)
    if args.part == "summary":
        merge("coverage", json.loads(OUTPUT.read_text())["coverage"])
    if args.part in ("coverage", "all"):
        rows = coverage(reps, sizes, tuple(args.truths))
        if not args.quick:
            merge("coverage", rows)
    if args.part in ("ties", "all"):
        result = ties(reps)
        if not args.quick:
            merge("ties", result)
    if not args.quick:
        print(OUTPUT)


if __name__ == "__main__":
    main()
