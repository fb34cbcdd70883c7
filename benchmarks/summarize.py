"""Write benchmarks/results/SUMMARY.md from the benchmark JSON files: each target beside what was measured.

    python benchmarks/summarize.py

Every figure comes from a ``benchmarks/results/*.json`` file written by one of the ``bench_*.py``
scripts; a benchmark that has not been run is listed as missing. Each line names the machine the
figure was measured on (CPU count, GPU, and the 1-min load average when recorded).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def machine(d: dict) -> str:
    m = d.get("machine", {})
    gpu = m.get("cuda") or (d["device"] if str(d.get("device", "")).startswith("NVIDIA") else None)
    load_avg = m.get("load_average")
    parts = [f"{m['cpu_count']} CPU cores" if m.get("cpu_count") else None, gpu,
             f"load {load_avg[0]:.1f}" if load_avg else None, f"torch {m.get('torch') or d.get('torch')}"]
    return ", ".join(p for p in parts if p)


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


CORESET_TARGETS: dict[str, Callable[[dict], bool]] = {
    "gaussian_50k": lambda r: r["speedup_vs_legacy"] >= 4,
    "gaussian_100k": lambda r: r["speedup_vs_legacy"] >= 4,
    "elpv_patchcore_346k": lambda r: r["seconds"] <= 200 or r["times_bound"] <= 1.5,
    "bottle_patchcore_214k": lambda r: r["seconds"] <= r["legacy_seconds"],
    "gaussian_750k_1pct": lambda r: r["seconds"] <= 300,
}


def coreset(d: dict) -> list[str]:
    bw = d["read_bandwidth"]
    cases = {name: r for name, r in d.items() if isinstance(r, dict) and "times_bound" in r}
    lines = [f"Streaming read bandwidth {bw['bytes_per_s'] / 1e9:.1f} GB/s ({bw['threads']} threads); the bound is one read of the "
             "fp16 points per pick (picks x N x d x 2 bytes / bandwidth). Legacy: the NumPy pruned loop this path replaced.", "",
             "| case | points | picks | seconds | x bound | rows read | system / CPU time | legacy s | speed-up | target | |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in cases.items():
        check = CORESET_TARGETS.get(name)
        try:
            met = verdict(check(r)) if check else ""
        except KeyError:  # a target against the legacy loop, run with --skip-legacy
            met = "not measured"
        legacy = f"{r['legacy_seconds']:.1f} | {r['speedup_vs_legacy']:.1f}x" if "legacy_seconds" in r else "– | –"
        lines.append(f"| {name} | {r['points'][0]:,}x{r['points'][1]} | {r['selected']:,} | {r['seconds']:.1f} | {r['times_bound']:.2f} | "
                     f"{100 * r['rows_read_fraction']:.1f}% | {100 * r['system_cpu_fraction']:.1f}% | {legacy} | {r['target']} | {met} |")
    exact = [f"{name.removeprefix('exactness_')} ({r['points'][0]:,} points, {r['selected']:,} picks): {verdict(r['identical_picks'])}"
             for name, r in d.items() if name.startswith("exactness_")]
    system = max(r["system_cpu_fraction"] for r in cases.values())
    return [*lines, "", "Picks identical to the straightforward fp32 loop's: " + "; ".join(exact) + ". "
            f"System time at most {100 * system:.1f}% of the CPU time (target < 5%: {verdict(system < 0.05)})."]


def aupro(d: dict) -> list[str]:
    return [f"AUPRO over 100 maps of 256x256: {d['aupro']['best_s']:.3f} s (target < 1 s: {verdict(d['aupro']['best_s'] < 1)}); "
            f"pixel AUROC on the same maps {d['pixel_auroc']['best_s']:.2f} s."]


def bootstrap(d: dict) -> list[str]:
    s, gap = d["setting"], d["metrics_binned_minus_exact"]
    return [f"MVTec `{s['category']}`, {s['method']}, {s['test_images']} test images of {s['map_size'][0]}x{s['map_size'][1]}, "
            f"{s['bins']} bins, {s['resamples']} resamples: all intervals in {d['all_intervals_s']:.2f} s (per-image table {d['table_s']:.2f} s + "
            f"resampling {d['intervals_s']:.2f} s; target <= {d['target_s']:.0f} s: {verdict(d['all_intervals_s'] <= d['target_s'])}); "
            f"a record's whole assessment (exact metrics, per-defect, table, intervals) {d['assess_s']:.2f} s; an unbinned bootstrap would take "
            f"~{d['exact_bootstrap_estimate_s']:.0f} s. Per-image table {d['per_image_bytes'] / 1024:.0f} KB; binned minus exact pixel metrics: "
            + ", ".join(f"{m} {gap[m]:+.1e}" for m in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro") if m in gap) + "."]


def nn_flops(d: dict) -> list[str]:
    lines = ["| stored width | queries x bank | GEMM GFLOP/s | backend | search GFLOP/s | of GEMM | images/s |", "|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        for backend in ("torch", "faiss"):
            if backend in r:
                b = r[backend]
                lines.append(f"| {r['dims']} | {r['queries']:,} x {r['bank']:,} | {r['gemm_gflops']:.0f} | {backend} | {b['gflops']:.0f} | "
                             f"{100 * b['fraction_of_gemm']:.0f}% | {b['images_per_s']:.1f} |")
    best = max(r[b]["fraction_of_gemm"] for r in d["rows"][:1] for b in ("torch", "faiss") if b in r)
    return [*lines, "", f"Default search at the reduced width: {100 * best:.0f}% of the GEMM rate (target >= 70%: {verdict(best >= 0.7)})."]


def passes(d: dict) -> str:
    """The per-pass ratios of an interleaved timing, when it has several passes."""
    per_pass = d.get("scoring_speedup_per_pass", [])
    return f"; passes {' / '.join(f'{x:.2f}' for x in per_pass)}" if len(per_pass) > 1 else ""


def reduced_rank(d: dict) -> list[str]:
    w, r, t = d["wide"], d["reduced"], d["targets"]
    return [f"{' '.join(d['overrides'])}: {d['n_train']} training, {d['n_test']} test images.", "",
            "| | literal bank | reduced bank | target |", "|---|---|---|---|",
            f"| bank | {w['bank_shape']}, {w['bank_mib']:.1f} MiB | {r['bank_shape']}, {r['bank_mib']:.1f} MiB | "
            f"{d['bank_ratio']:.1f}x smaller (>= {t['bank_ratio']:g}x: {verdict(d['bank_ratio'] >= t['bank_ratio'])}) |",
            f"| scoring images/s | {w['scoring_images_per_s']:.1f} | {r['scoring_images_per_s']:.1f} | "
            f"{d['scoring_speedup']:.2f}x{passes(d)} (>= {t['scoring_speedup']:g}x: {verdict(d['scoring_speedup'] >= t['scoring_speedup'])}) |",
            f"| coreset picks shared | | {100 * d['coreset_picks_shared']:.2f}% | >= 99.9%: {verdict(d['coreset_picks_shared'] >= 0.999)} |",
            f"| image scores, max rel. diff | | {d['image_scores_max_relative_difference']:.1e} | <= 1e-4: "
            f"{verdict(d['image_scores_max_relative_difference'] <= 1e-4)} |",
            f"| maps, max rel. diff | | {d['maps_max_relative_difference']:.1e} | <= 1e-4: {verdict(d['maps_max_relative_difference'] <= 1e-4)} |"]


def vs_anomalib(d: dict) -> list[str]:
    s = d["setting"]
    lines = [f"MVTec `{s['category']}`, {s['backbone']} {'+'.join(s['layers'])}, {s['image_size']} px, coreset ratio {s['coreset_ratio']}, {s['device']}.", "",
             "| | fit + test s | fit s | I-AUROC | P-AUROC |", "|---|---|---|---|---|"]
    for name in ("adbench", "anomalib"):
        if name in d:
            r = d[name]
            lines.append(f"| {name}{' ' + r['version'] if r.get('version') else ''} | {r['seconds']:.1f} | {r['fit_seconds']:.1f} | "
                         f"{100 * r['image_auroc']:.2f} | {100 * r['pixel_auroc']:.2f} |" if r.get("pixel_auroc") is not None else
                         f"| {name} | {r['seconds']:.1f} | {r['fit_seconds']:.1f} | {100 * r['image_auroc']:.2f} | n/a |")
    if "speedup" in d:
        lines += ["", f"Speed-up {d['speedup']:.1f}x (target >= 2x: {verdict(d['speedup'] >= 2)}); I-AUROC difference "
                  f"{d['image_auroc_diff_points']:+.2f} points (target within 0.5: {verdict(abs(d['image_auroc_diff_points']) <= 0.5)})."]
    return lines


def methods_cost(d: dict) -> list[str]:
    lines = [f"{d['dataset']}, backbone config `{d['backbone']}`, one process per method.", "",
             "| method | fit s | images/s | memory bank MiB | peak RSS MiB | I-AUROC | P-AUROC |", "|---|---|---|---|---|---|---|"]
    for name, r in d["methods"].items():
        p = "n/a" if r["pixel_auroc"] is None else f"{100 * r['pixel_auroc']:.1f}"
        lines.append(f"| {name} | {r['fit_seconds']:.1f} | {r['model_images_per_s']:.2f} | {r['memory_bank_bytes'] / 2**20:.2f} | "
                     f"{r['peak_rss_bytes'] / 2**20:.0f} | {100 * r['image_auroc']:.1f} | {p} |")
    return lines


def padim_memory(d: dict) -> list[str]:
    overhead = d["peak_rss_bytes"] - d["baseline_rss_bytes"] if d["device"] == "cpu" else d["peak_gpu_bytes"]
    inverse = d["inverse_bytes_formula_HWd2x4"]
    return [f"PaDiM {d['backbone']}, d = {d['dim']}, {d['positions']} positions, {d['n_train']} training images, {d['device']}: "
            f"inverse covariances H·W·d²·4 = {inverse / 2**30:.2f} GiB; peak {'RSS above the backbone baseline' if d['device'] == 'cpu' else 'GPU memory'} "
            f"{overhead / 2**30:.2f} GiB = {overhead / inverse:.2f}x (target < 2x: {verdict(overhead < 2 * inverse)}); "
            f"fit {d['fit_seconds']:.1f} s, scoring {d['score_images_per_s']:.1f} images/s."]


def memory_budget(d: dict) -> list[str]:
    lines = [d["what"] + f"; bank {d['fit']['bank_shape'][0]:,} x {d['fit']['bank_shape'][1]} = {d['fit']['bank_bytes'] / 2**20:.0f} MiB.", "",
             "| backend | block budget MiB | bank MiB | scoring overhead MiB | s |", "|---|---|---|---|---|"]
    for r in d["rows"]:
        lines.append(f"| {r['backend']} | {r['budget_bytes'] / 2**20:.0f} | {r['bank_bytes'] / 2**20:.0f} | {r['scoring_overhead_bytes'] / 2**20:.0f} | {r['seconds']:.1f} |")
    return lines


def feature_cache(d: dict) -> list[str]:
    wall, images = d["total_wall_s"], d["backbone_images"]
    return [f"Sweep of {', '.join(r['method'] for r in d['with_cache'])} on {' '.join(d['overrides'])}: backbone passes over images "
            f"{images['off']} without the cache, {images['on']} with it (features extracted once); wall time {wall['off']:.0f} s vs {wall['on']:.0f} s."]


def gpu(d: dict) -> list[str]:
    workers = f"; {d['workers']} loader workers" if "workers" in d else ""
    lines = [f"{d['device']}, {d['note']}; {d['nn_search']}{workers}.", "",
             "| method | images/s (model) | end-to-end images/s | end-to-end / model | fit s | peak GPU GiB (scoring) | memory bank MiB |",
             "|---|---|---|---|---|---|---|"]
    for m in d["methods"]:
        if "error" in m:
            lines.append(f"| {m['method']} | failed: {m['error'][:80]} | | | | | |")
            continue
        share = m.get("end_to_end_fraction_of_model")
        startup = m.get("startup_64_fraction_of_model")
        if startup is not None:
            share_text = f" ({m['n_test']:,} test images; a fresh loader over 64: {100 * startup:.0f}%)"
        else:
            share_text = f" ({m.get('n_test', '?')} test images)"
        lines.append(f"| {m['method']} | {m['images_per_s']:.0f} | {m['end_to_end_images_per_s']:.0f} | "
                     f"{'–' if share is None else f'{100 * share:.0f}% (target >= 70%: {verdict(share >= 0.7)}){share_text}'} | {m['fit_s']:.1f} | "
                     f"{m['peak_gpu_predict_bytes'] / 2**30:.2f} | {m['memory_bank_bytes'] / 2**20:.1f} |")
    for name, r in d.get("coreset", {}).items():
        shared = f", {100 * r['shared_picks_with_cpu_exact']:.2f}% of its picks also the exact CPU path's" if "shared_picks_with_cpu_exact" in r else ""
        lines += ["", f"Coreset {name}: {r['selected']:,} picks of {r['points'][0]:,}x{r['points'][1]} in {r['seconds']:.1f} s{shared}."]
    if "knn" in d:
        k = d["knn"]
        lines += ["", f"1-NN scoring, {k['shape']['queries']:,} x {k['shape']['bank']:,} x {k['shape']['dims']}: fp32 matmul {k['matmul_gflops']:.0f} GFLOP/s; "
                  + "; ".join(f"{b} {k[b]['gflops']:.0f} GFLOP/s ({100 * k[b]['fraction_of_matmul']:.0f}%)" for b in ("torch", "faiss") if b in k) + "."]
    return lines


def fit_memory(d: dict) -> list[str]:
    lines = ["| fit | images | features GiB | RSS before fit GiB | peak RSS GiB | (peak - before) / features | fit s | target |", "|---|---|---|---|---|---|---|---|"]
    for name, r in d.items():
        if not isinstance(r, dict) or "peak_rss_bytes" not in r:
            continue
        ratio = r["peak_over_features_plus_backbone"]
        target = f"<= 1.5: {verdict(ratio <= 1.5)}" if r.get("target") else ""
        lines.append(f"| {name} | {r['images']:,} | {r['features_bytes'] / 2**30:.2f} | {r['rss_before_fit_bytes'] / 2**30:.2f} | "
                     f"{r['peak_rss_bytes'] / 2**30:.2f} | {ratio:.2f} | {r['fit_seconds']:.0f} | {target} |")
    return lines


SECTIONS: list[tuple[str, str, Callable[[dict], list[str]], str]] = [
    ("coreset", "Greedy coreset", coreset, "bench_coreset.py"),
    ("aupro", "AUPRO", aupro, "bench_aupro.py"),
    ("bootstrap", "Bootstrap confidence intervals", bootstrap, "bench_bootstrap.py"),
    ("nn_flops_cpu", "Nearest-neighbour scoring FLOP rate", nn_flops, "bench_nn_flops.py"),
    ("reduced_rank_mvtec_bottle_0.1", "PatchCore reduced-rank bank: MVTec bottle, 10%", reduced_rank, "bench_reduced_rank.py dataset=mvtec dataset.category=bottle"),
    ("reduced_rank_elpv_mono_0.1", "PatchCore reduced-rank bank: ELPV, 10%", reduced_rank, "bench_reduced_rank.py"),
    ("vs_anomalib_cpu", "PatchCore: adbench vs anomalib 2.7 (10% coreset)", vs_anomalib, "bench_vs_anomalib.py"),
    ("vs_anomalib_cpu_ratio0.01", "PatchCore: adbench vs anomalib 2.7 (1% coreset)", vs_anomalib, "bench_vs_anomalib.py --ratio 0.01"),
    ("methods_cost", "Memory-bank methods side by side", methods_cost, "bench_methods_cost.py"),
    ("padim_memory", "PaDiM at the paper's largest setting (CPU)", padim_memory, "bench_methods_cost.py --padim-memory"),
    ("padim_memory_cuda", "PaDiM at the paper's largest setting (CUDA)", padim_memory, "bench_methods_cost.py --padim-memory --device cuda"),
    ("memory_budget", "Scoring under a memory budget", memory_budget, "bench_memory_budget.py"),
    ("feature_cache", "Feature cache", feature_cache, "bench_feature_cache.py"),
    ("fit_memory", "Fit memory on a 2,000-image training set", fit_memory, "bench_fit_memory.py"),
    ("gpu", "GPU set: methods, coreset, kNN", gpu, "bench_gpu.py"),
]


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    out = ["# Benchmark summary", "", "Generated by `python benchmarks/summarize.py` from `benchmarks/results/*.json`; do not edit by hand.", ""]
    for name, title, render, script in SECTIONS:
        d = load(name)
        out += [f"## {title}", "", f"`benchmarks/{script}` → `results/{name}.json`" + (f" · {machine(d)}" if d else ""), ""]
        out += (render(d) if d else ["Not run yet."]) + [""]
    cfa = RESULTS / "cfa_compression.md"
    if cfa.is_file():
        out += ["## CFA memory-bank compression (Table 6)", "", f"See [cfa_compression.md]({cfa.name}) (`benchmarks/bench_cfa_compression.py`).", ""]
    path = RESULTS / "SUMMARY.md"
    path.write_text("\n".join(out))
    print(path)


if __name__ == "__main__":
    main()
