"""GPU-ready paths, checked where they can be without a GPU: the nearest-neighbour backend chosen on CUDA,
and the per-pick coreset loop that runs on CUDA (device-agnostic torch, run here on CPU tensors)."""

from __future__ import annotations

import pytest
import torch

from adbench.features import nn_search
from adbench.features.coreset import (
    greedy_coreset,
    greedy_coreset_full,
    greedy_coreset_reference,
)
from adbench.features.nn_search import NearestNeighbours


@pytest.mark.parametrize(("gpu_faiss", "expected"), [(False, "torch"), (True, "faiss")])
def test_auto_backend_on_cuda_needs_a_gpu_build_of_faiss(monkeypatch, gpu_faiss, expected):
    pytest.importorskip("faiss")
    monkeypatch.setattr(nn_search, "faiss_gpu_available", lambda: gpu_faiss)
    assert NearestNeighbours("auto", device="cuda").backend == expected  # a CPU-only faiss would copy every query to the host
    assert NearestNeighbours("auto", device="cpu").backend == "faiss"


def test_cuda_loop_picks_the_farthest_points_like_the_exact_loop():
    generator = torch.Generator().manual_seed(0)
    centres = 6 * torch.randn(20, 24, generator=generator)
    points = (centres.repeat_interleave(40, 0) + 0.2 * torch.randn(800, 24, generator=generator)).contiguous()
    # well separated clusters: the first 20 picks are one per cluster, whatever the rounding of ||x||^2 - 2 x.c + ||c||^2
    loop = greedy_coreset_full(points, 20)
    assert torch.equal(loop, greedy_coreset_reference(points, 20))
    assert sorted((loop // 40).tolist()) == list(range(20))
    assert torch.equal(greedy_coreset(points, 20), loop)
