"""Cost per image of a fitted detector, for every run record: parameters, FLOPs, latency, throughput, bank bytes.

- ``params_backbone``: weights of every network the detector runs (a network shared by ensemble
  members counted once); ``params_fitted``: floating-point numbers of its fitted state (bank,
  Gaussians, heads); ``params_total`` their sum.
- ``flops_per_image``: ``torch.utils.flop_counter.FlopCounterMode`` over one ``predict`` of one image:
  FLOPs, not MACs (a multiply-add counts 2), of the ops torch has formulas for (matmul, conv,
  attention); elementwise ops, sorting and top-k are not counted. faiss runs outside torch, so while
  counting, nearest-neighbour searches take the torch path, which computes the same distance
  matmul (||q||^2 - 2 q.b + ||b||^2, as faiss's IndexFlatL2 does with BLAS). ``flops_per_image_backbone``:
  the networks' forward passes alone.
- ``latency_ms_p50`` / ``latency_ms_p95``: wall time of ``predict`` on single images (batch 1), after
  warm-up, model only (a decoded, normalised tensor in; scores and maps out), over up to ``count``
  test images spread over the test set.
- ``images_per_s``: model-only throughput at the run's ``batch_size`` over the whole test set
  (measured by the predict loop, :mod:`adbench.methods.scoring`).
- ``memory_bank_bytes``: everything fitted that scoring needs (the detector's own count).

Backbones read through a feature cache are measured without it (the network computes): the cost is
that of deployment. A cached run's network extracts every stage, so its figures include stages the
method may not use.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..features.cache import CachedBackbone
from ..features.nn_search import NearestNeighbours, squared_distances
from .base import AnomalyDetector, synchronize


def detectors(method: AnomalyDetector) -> list[AnomalyDetector]:
    """``method`` and, for ensembles, its members (recursively)."""
    members = getattr(method, method.member_key, []) if method.member_key else []
    return [method, *(d for member in members for d in detectors(member))]


def networks(method: AnomalyDetector) -> list[torch.nn.Module]:
    """The distinct backbone networks the detector runs (a cached backbone's wrapped network)."""
    found: dict[int, torch.nn.Module] = {}
    for detector in detectors(method):
        net = detector.backbone.inner if isinstance(detector.backbone, CachedBackbone) else detector.backbone
        found.setdefault(id(net), net)
    return list(found.values())


@contextmanager
def uncached(method: AnomalyDetector) -> Iterator[None]:
    """Within the block every detector calls its network directly, not through the feature cache."""
    swapped = [(d, d.backbone) for d in detectors(method) if isinstance(d.backbone, CachedBackbone)]
    for detector, cached in swapped:
        detector.backbone = cached.inner
    try:
        yield
    finally:
        for detector, cached in swapped:
            detector.backbone = cached


@contextmanager
def searches_in_torch() -> Iterator[None]:
    """Within the block faiss searches run as the torch distance matmul, so FlopCounterMode sees them."""
    original = NearestNeighbours.search

    def search(self: NearestNeighbours, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        if self.backend != "faiss":
            return original(self, queries, k)
        dist, index = squared_distances(queries.to(self.bank.device).float(), self.bank).topk(min(k, self.bank.shape[0]), dim=1, largest=False)
        return dist.sqrt().to(queries.device), index.to(queries.device)

    NearestNeighbours.search = search
    try:
        yield
    finally:
        NearestNeighbours.search = original


def count_flops(fn, *args) -> int:
    """FLOPs torch counts while ``fn(*args)`` runs."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())


def latencies_ms(method: AnomalyDetector, images: Sequence[torch.Tensor], warmup: int = 2) -> list[float]:
    """Milliseconds of ``predict`` per single image, after ``warmup`` calls on the first one."""
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            method.predict(images[0])
        for image in images:
            synchronize(method.device)
            start = time.perf_counter()
            method.predict(image)
            synchronize(method.device)
            times.append(1000 * (time.perf_counter() - start))
    return times


def measure_cost(method: AnomalyDetector, test: Sequence[dict], images_per_s: float, batch_size: int, count: int = 20) -> dict[str, Any]:
    """The cost block of a run record (keys above) for a fitted ``method`` and its ``test`` dataset."""
    picks = np.unique(np.linspace(0, len(test) - 1, min(count, len(test))).round().astype(int))
    images = [test[int(i)]["image"][None] for i in picks]
    nets = networks(method)
    with uncached(method):
        with searches_in_torch():
            flops = count_flops(method.predict, images[0])
        backbone_flops = sum(count_flops(net, images[0].to(next(net.parameters()).device)) for net in nets)
        times = latencies_ms(method, images)
    backbone_params = sum(p.numel() for net in nets for p in net.parameters())
    fitted_params = sum(t.numel() for t in method.fitted_state().values() if t.is_floating_point())
    return {
        "params_total": backbone_params + fitted_params,
        "params_backbone": backbone_params,
        "params_fitted": fitted_params,
        "flops_per_image": flops,
        "flops_per_image_backbone": backbone_flops,
        "latency_ms_p50": float(np.percentile(times, 50)),
        "latency_ms_p95": float(np.percentile(times, 95)),
        "latency_images": len(times),
        "images_per_s": images_per_s,
        "batch_size": batch_size,
        "memory_bank_bytes": int(method.memory_bank_bytes),
    }
