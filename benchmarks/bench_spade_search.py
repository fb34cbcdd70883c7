"""SPADE's pixel search: the method's per-image search against a batched alternative, on one fitted model and
the same test features (backbone and image kNN excluded; every variant gets the same inputs).

- ``loop``: ``SPADE.pixel_scores``: one exact ``NearestNeighbours`` search per test image and pyramid layer
  against that image's gallery (the K nearest training images' maps).
- ``batched``: the galleries of a group of images gathered and searched at once by :func:`certified_search`
  (a batched float32 ranking whose rounding error is bounded, so the result is a float64 search's);
  ``batched-tf32``: the same with the ranking's inputs rounded to TF32 (CUDA's tensor cores).

Reported: images/s of the pixel search per variant and the largest pixel-map difference from ``loop`` relative
to the maps' maximum. wide_resnet50_2 with random weights at 224 px (the papers' shapes: ~287 GFLOP of distances
per image at K = 50; the scores only need to agree). Measured on an H200 (2026-12-04): loop 93 img/s,
batched-tf32 22 img/s, and the float64 batched search SPADE shipped before 39 img/s, so SPADE keeps the loop.

    python benchmarks/bench_spade_search.py --device cuda
    python benchmarks/bench_spade_search.py --device cpu --test-images 8 --train-images 8   # dry run
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from _common import save

from adbench.api import compose_config
from adbench.methods.base import synchronize
from adbench.pipeline import build_pipeline, loader

GROUP_BYTES = 256 * 2**20  # batched variants: galleries gathered at once, and the block of fast scores

CANDIDATES = 15  # batched_search: neighbours kept from the fast pass beyond the k wanted, re-ranked in float64
UNIT = 2.0**-24  # float32 unit roundoff
TF32_UNIT = 2.0**-11  # of an input rounded to TF32 (10 explicit mantissa bits)


def to_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 ``x`` rounded to the nearest TF32 value (ties away from zero): the GPU's TF32 matmul then multiplies
    exactly these inputs, so the rounding error is known (``TF32_UNIT``), whatever the hardware's own conversion."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def certified_search(queries: torch.Tensor, banks: torch.Tensor, k: int = 1, max_block_bytes: int = 256 * 2**20,
                   tf32: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-NN of every row of ``queries[g]`` (G, n, d) in its own bank ``banks[g]`` (G, m, d), all groups at once
    (SPADE's per-image galleries): (distances, indices), each (G, n, k), plain L2 in float64, ascending.

    A fast pass ranks the bank by s(b) = ||b||^2 - 2 q.b (= ||q - b||^2 - ||q||^2; one batched matmul, ``baddbmm``,
    per block of at most ``max_block_bytes``, around the bank's mean) in float32, or with inputs rounded to TF32
    (``tf32``: the tensor cores on CUDA) and keeps the k + ``CANDIDATES`` best.
    Their distances are recomputed in float64. The rounding error of every fast score is bounded by
    E = 2 ((2u + u^2)(1 + g) + g + 3v) ||q|| B + (g + 2v) B^2, B the largest centred bank norm, u the inputs'
    unit roundoff, v float32's, g = d v / (1 - d v) (Higham 2002, Accuracy and Stability of Numerical Algorithms,
    eq. 3.5 and Lemma 3.1), doubled for margin: when the last kept score exceeds the k-th by more than 2E, no
    other bank row can be among the k nearest, and the result equals a float64 search. Rows where it doesn't
    (dense near-ties) are searched again in float64. No per-group Python loop; one host synchronisation per
    block of queries (the count of rows to search again).
    """
    groups, n, dims = queries.shape
    m = banks.shape[1]
    want = min(k, m)
    keep = min(m, want + CANDIDATES)
    centre = banks.float().mean(1, keepdim=True)  # distances do not move; fewer digits lost around the bank's mean
    q32, b32 = queries.float() - centre, banks.float() - centre
    fast_q, fast_b = (to_tf32(q32), to_tf32(b32)) if tf32 else (q32, b32)
    bank_sq = b32.square().sum(2)[:, None, :]  # (G, 1, m)
    largest = bank_sq.amax(2, keepdim=True).sqrt()  # B, (G, 1, 1)
    u = (TF32_UNIT if tf32 else 0.0) + UNIT  # inputs: rounding to TF32 and the float32 centring
    g = dims * UNIT / (1 - dims * UNIT)
    coefficient_qb, coefficient_bb = 2 * ((2 * u + u * u) * (1 + g) + g + 3 * UNIT), g + 2 * UNIT
    cols = max(keep, min(m, max_block_bytes // (4 * groups * max(n, 1))))
    rows = max(1, min(n, max_block_bytes // (4 * groups * cols)))
    buffer = torch.empty(groups * rows * cols, device=queries.device)  # reused by every block
    out_d, out_i = [], []
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        for r0 in range(0, n, rows):
            q = fast_q[:, r0 : r0 + rows]
            best_s = best_i = None
            for c0 in range(0, m, cols):
                c1 = min(m, c0 + cols)
                part = buffer[: groups * q.shape[1] * (c1 - c0)].view(groups, q.shape[1], c1 - c0)
                torch.baddbmm(bank_sq[:, :, c0:c1], q, fast_b[:, c0:c1].transpose(1, 2), alpha=-2.0, out=part)
                s, i = part.topk(min(keep, c1 - c0), dim=2, largest=False)
                i += c0
                if best_s is not None:
                    s, order = torch.cat([best_s, s], 2).topk(keep, dim=2, largest=False)
                    i = torch.cat([best_i, i], 2).gather(2, order)
                best_s, best_i = s, i
            exact_q = queries[:, r0 : r0 + rows].double()
            if keep < m:
                norm_q = torch.linalg.vector_norm(q32[:, r0 : r0 + rows], dim=2, keepdim=True)
                bound = 2 * (coefficient_qb * norm_q * largest + coefficient_bb * largest.square())  # 2E, margin included
                unsure = (best_s[..., -1:] - best_s[..., want - 1 : want] <= 2 * bound)[..., 0]
                if bool(unsure.any()):  # host synchronisation: rows whose k nearest may lie outside the kept ones
                    best_i = exact_rows(exact_q, banks, unsure, best_i, max_block_bytes)
            near = banks.gather(1, best_i.reshape(groups, -1, 1).expand(-1, -1, dims)).reshape(groups, -1, keep, dims)
            dist = torch.linalg.vector_norm(exact_q[:, :, None, :] - near.double(), dim=3)
            dist, order = dist.sort(dim=2)
            out_d.append(dist[..., :want])
            out_i.append(best_i.gather(2, order)[..., :want])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return torch.cat(out_d, 1), torch.cat(out_i, 1)


def exact_rows(queries: torch.Tensor, banks: torch.Tensor, rows: torch.Tensor, idx: torch.Tensor,
                max_block_bytes: int) -> torch.Tensor:
    """``idx`` (G, n, keep) with the ``rows`` (G, n) mask's neighbours found again against the whole bank in float64."""
    idx = idx.clone()
    chunk = max(1, max_block_bytes // (8 * banks.shape[1]))
    for group in rows.any(1).nonzero()[:, 0].tolist():
        bank = banks[group].double()
        for chosen in rows[group].nonzero()[:, 0].split(chunk):
            idx[group, chosen] = torch.cdist(queries[group, chosen], bank).topk(idx.shape[2], dim=1, largest=False).indices
    return idx


def batched_pixel_scores(method, pyramid: list[torch.Tensor], neighbours: torch.Tensor, size: tuple[int, int],
                         tf32: bool) -> torch.Tensor:
    """``SPADE.pixel_scores`` with the galleries of a group of images searched in one :func:`certified_search` call."""
    b, k = neighbours.shape
    neighbours = neighbours.to(method.gallery.device)
    scores = torch.zeros(b, *size, device=pyramid[0].device)
    start = 0
    for maps, (c, h, w) in zip(pyramid, method.gallery_shapes.tolist()):
        layer = method.gallery[:, start : start + c * h * w]
        group = max(1, GROUP_BYTES // (16 * k * c * h * w))  # three float32 copies of the galleries
        for g in range(0, b, group):
            near = neighbours[g : g + group]
            bank = layer[near.reshape(-1)].reshape(len(near), k, c, h * w).transpose(2, 3).reshape(len(near), k * h * w, c)
            queries = maps[g : g + group].flatten(2).transpose(1, 2).to(bank.device)
            dist, _ = certified_search(queries, bank, method.kappa, GROUP_BYTES, tf32)
            patch = dist.mean(2).float().reshape(len(near), 1, h, w).to(scores.device)
            scores[g : g + group] += F.interpolate(patch, size=size, mode="bilinear", align_corners=False)[:, 0]
        start += c * h * w
    return scores / len(pyramid)


def timed(fn, device: torch.device) -> tuple[torch.Tensor, float]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def fitted_inputs(args: argparse.Namespace, device: torch.device):
    """A SPADE fitted on synthetic images as a run fits it, and per test batch its (pyramid maps, neighbours, size)."""
    with tempfile.TemporaryDirectory(prefix="adbench-spade-") as scratch:
        cfg = compose_config([
            "method=spade", f"backbone={args.backbone}", "backbone.pretrained=false", f"device={device.type}", "dataset=synthetic",
            "dataset.size=256", "dataset.resize=256", "dataset.crop=224", f"dataset.n_train={args.train_images}",
            f"dataset.n_test={args.test_images}", f"dataset.root={scratch}", "num_workers=0",
        ])
        pipeline = build_pipeline(cfg).fit()
        method, inputs = pipeline.method, []
        with torch.no_grad():
            for batch in loader(pipeline.test, cfg):
                images = batch["image"].to(device)
                *pyramid, last = method.layer_maps(images)
                inputs.append((pyramid, method.image_knn(last.mean((2, 3)))[1], tuple(images.shape[-2:])))
    return method, inputs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--train-images", type=int, default=64)
    parser.add_argument("--test-images", type=int, default=256)
    parser.add_argument("--backbone", default="wide_resnet50_2")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    method, inputs = fitted_inputs(args, device)
    variants = {"loop": method.pixel_scores, "batched": lambda p, n, s: batched_pixel_scores(method, p, n, s, tf32=False)}
    if device.type == "cuda":
        variants["batched-tf32"] = lambda p, n, s: batched_pixel_scores(method, p, n, s, tf32=True)
    rows, maps = {}, {}
    with torch.no_grad():
        for name, fn in variants.items():
            fn(*inputs[0])  # warm-up: kernels, allocator
            seconds, out = 0.0, []
            for pyramid, neighbours, size in inputs:
                result, took = timed(lambda: fn(pyramid, neighbours, size), device)
                seconds += took
                out.append(result.double().cpu())
            maps[name] = torch.cat(out)
            rows[name] = {"seconds": seconds, "images_per_s": len(maps[name]) / seconds,
                          "max_map_difference_from_loop": float((maps[name] - maps["loop"]).abs().max() / maps["loop"].abs().max())}
            print(f"{name}: {rows[name]}", flush=True)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "backbone": args.backbone, "weights": "random (timing and agreement only)", "image_size": 224,
        "train_images": args.train_images, "test_images": args.test_images, "top_k": int(method.top_k), **rows,
    }
    print(f"written {save(f'spade_search_{device.type}', result)}")


if __name__ == "__main__":
    main()
