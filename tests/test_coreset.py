"""Greedy coreset: the fused fp16 CPU path against the straightforward fp32 loop, the loop against float64
farthest-point distances (scipy), the chunked projection and the feature store it reads."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from adbench.features import coreset as coreset_module
from adbench.features import coreset_kernels as kernels
from adbench.features.coreset import (
    CpuGreedy,
    _start,
    coreset_indices,
    greedy_coreset,
    greedy_coreset_reference,
    project,
    projection_matrix,
)
from adbench.features.store import FeatureStore


def clustered(n_clusters: int = 6, per_cluster: int = 700, dims: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = 5 * rng.standard_normal((n_clusters, dims))
    return np.concatenate([c + 0.3 * rng.standard_normal((per_cluster, dims)) for c in centres]).astype(np.float32)


def forced(points: np.ndarray, n_select: int, prune: bool, segment: int = 7) -> torch.Tensor:
    """The CPU kernel with pruning forced on or off, in short segments."""
    run = CpuGreedy(points, n_select, _start(points.shape[0], 0))
    run.picks_between(0, 1, prune=False)
    for start in range(1, n_select, segment):
        run.picks_between(start, min(n_select, start + segment), prune)
    return torch.from_numpy(run.picks)


DATA = {
    "gaussian": lambda: np.random.default_rng(1).standard_normal((3000, 37), dtype=np.float32),  # d not a multiple of the vector width
    "clustered": clustered,
    "offset_small_scale": lambda: clustered() * 1e-3 + 100.0,  # far from the origin, tiny spread: fp16 needs centring and scaling
    "wide_range": lambda: clustered() * np.logspace(-3, 3, 40, dtype=np.float32),
}


@pytest.mark.parametrize("name", DATA)
@pytest.mark.parametrize("prune", [False, True])
def test_fused_picks_equal_the_fp32_loop(name, prune):
    points = DATA[name]()
    expected = greedy_coreset_reference(points, 250)
    assert torch.equal(forced(points, 250, prune), expected)
    assert len(set(expected.tolist())) == 250


def sequential_sq(points: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The fp32 loop's arithmetic: (x_k - c_k)^2 summed over k in order, in float32, one column at a time."""
    acc = np.zeros(len(points), np.float32)
    for k in range(points.shape[1]):
        diff = points[:, k] - c[k]
        acc += diff * diff
    return acc


@pytest.mark.parametrize("prune", [False, True])
def test_minima_are_the_exact_fp32_distances_bit_for_bit(prune):
    points = DATA["clustered"]()
    picks = forced(points, 150, prune).numpy()
    run = CpuGreedy(points, 150, _start(len(points), 0))
    run.run(progress=False)
    expected = np.minimum.reduce([sequential_sq(points, points[p]) for p in picks])
    assert np.array_equal(run.min_sq, expected)  # any other summation order or an FMA changes the last bits of most


def test_exact_distance_keeps_its_arithmetic_inside_fast_math_callers():
    exact = numba.njit(kernels.exact_sq.py_func)  # a fresh dispatcher: first compiled from the fast-math caller below

    @numba.njit(fastmath=True)
    def fast_caller(points, c, out):
        for i in range(points.shape[0]):
            out[i] = exact(points[i], c)

    points = DATA["gaussian"]()[:500]
    out = np.empty(500, np.float32)
    fast_caller(points, points[3], out)
    assert np.array_equal(out, sequential_sq(points, points[3]))


def test_automatic_choice_gives_the_same_picks():
    points = clustered(n_clusters=40, per_cluster=300, dims=16)
    assert torch.equal(greedy_coreset(points, 1200, seed=4), greedy_coreset_reference(points, 1200, seed=4))


def test_pruning_skips_the_rows_of_separated_clusters():
    points = clustered(n_clusters=40, per_cluster=300, dims=16)
    run = CpuGreedy(points, 400, _start(len(points), 0))
    run.picks_between(0, 1, prune=False)
    run.picks_between(1, 400, prune=True)
    assert run.stats["rows_read"] < 0.5 * len(points) * 399
    assert run.stats["exact_distances"] < run.stats["rows_read"], "the fp16 bound should settle most rows without fp32"


def test_duplicate_points_tie_on_the_first_index():
    base = np.random.default_rng(2).standard_normal((50, 8), dtype=np.float32)
    points = np.concatenate([base, base, base])  # every point three times: ties everywhere
    for prune in (False, True):
        picks = forced(points, 60, prune)
        assert torch.equal(picks, greedy_coreset_reference(points, 60))
    assert set(greedy_coreset(points, 50).tolist()) <= set(range(50)), "a tie must go to the first copy"


def test_pass_split_over_threads_gives_the_same_picks(monkeypatch):
    monkeypatch.setattr(kernels, "PARALLEL_MIN_BYTES", 0)  # chunks on every numba thread, however small the data
    base = np.random.default_rng(3).standard_normal((40, 8), dtype=np.float32)
    for points in (clustered(n_clusters=8, per_cluster=100, dims=16), np.concatenate([base, base, base])):  # ties across chunks
        for prune in (False, True):
            assert torch.equal(forced(points, 80, prune), greedy_coreset_reference(points, 80))


def test_reference_loop_picks_the_farthest_point_in_float64():
    points = DATA["clustered"]()
    picks = greedy_coreset_reference(points, 120).tolist()
    dist = cdist(points.astype(np.float64), points[picks].astype(np.float64))  # scipy, float64
    for j in range(1, len(picks)):
        nearest = dist[:, :j].min(1)
        assert nearest[picks[j]] >= nearest.max() * (1 - 1e-5)


def test_greedy_coreset_takes_arrays_and_tensors_and_checks_input():
    points = DATA["gaussian"]()
    assert torch.equal(greedy_coreset(points, 40, seed=3), greedy_coreset(torch.from_numpy(points), 40, seed=3))
    assert torch.equal(greedy_coreset(points, 40, seed=3), greedy_coreset_reference(points, 40, seed=3))
    assert greedy_coreset(points[:5], 10).tolist() == greedy_coreset_reference(points[:5], 5).tolist()
    bad = points.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        greedy_coreset(bad, 10)


def test_progress_bar_shows_picks_on_stderr(monkeypatch, capsys):
    monkeypatch.setattr(coreset_module, "PROGRESS_AFTER_S", 0.0)
    greedy_coreset(DATA["gaussian"](), 30)
    err = capsys.readouterr().err
    assert "greedy coreset" in err and "pick" in err
    greedy_coreset(DATA["gaussian"](), 30, progress=False)
    assert capsys.readouterr().err == ""


def test_projection_in_blocks_equals_one_matmul(monkeypatch):
    monkeypatch.setattr(coreset_module, "CHUNK_ROWS", 100)
    features = torch.randn(1050, 64, dtype=torch.float64).float()
    expected = features.double() @ projection_matrix(64, 16, seed=5).double()
    assert torch.allclose(project(features, 16, seed=5).double(), expected, atol=1e-4)
    layer = torch.nn.Linear(64, 24)
    with torch.no_grad():
        mapped = project(features, 16, seed=5, transform=layer).double()
        assert torch.allclose(mapped, layer(features).double() @ projection_matrix(24, 16, seed=5).double(), atol=1e-4)
    assert torch.equal(project(features, None), features)


@pytest.mark.parametrize("budget", [None, 1])
def test_feature_store_round_trip(budget, monkeypatch):
    monkeypatch.setattr("adbench.features.store.BLOCK_BYTES", 4 * 10 * 7)  # 7-row blocks: many blocks, a partial last one
    rows = torch.randn(53, 10)
    store = FeatureStore(budget_bytes=budget)
    for part in rows.split(9):
        store.append(part)
    assert len(store) == 53 and store.spilled == (budget == 1)
    assert torch.equal(torch.cat(list(store.chunks())), rows)
    index = torch.tensor([52, 0, 7, 7, 30, 31, 6, 51])
    assert torch.equal(store.take(index), rows[index])
    with pytest.raises(IndexError):
        store.take(torch.tensor([53]))
    assert torch.equal(store.tensor(), rows)
    assert len(store) == 53
    store.close()


def test_coreset_of_a_spilled_store_equals_the_tensor_one():
    features = torch.from_numpy(clustered(dims=200))
    store = FeatureStore(budget_bytes=1)  # every row goes to a temporary file
    for part in features.split(500):
        store.append(part)
    assert store.spilled
    assert torch.equal(coreset_indices(store, 0.05, 128, seed=2), coreset_indices(features, 0.05, 128, seed=2))
    assert torch.equal(coreset_indices(store, 0.05, 128, seed=2), greedy_coreset_reference(project(features, 128, seed=2), int(len(features) * 0.05), seed=2))


@pytest.mark.parametrize("name, layers, params", [
    ("patchcore", ["blocks.2", "blocks.4"], {"coreset_ratio": 0.1}),
    ("spade", ["blocks.1", "blocks.2", "blocks.4", "blocks.6"], {}),
    ("reconpatch", ["blocks.2", "blocks.4"], {"epochs": 0}),
])
def test_the_fit_memory_budget_reaches_the_methods_store(name, layers, params, monkeypatch):
    """``fit(batches, memory_budget)``: the budget given to ``fit`` is the store's; spilled features score the same."""
    from adbench.features.backbones import Backbone
    from adbench.methods import method_class

    budgets = []
    original = FeatureStore.__init__
    monkeypatch.setattr(FeatureStore, "__init__", lambda self, budget_bytes=None: (budgets.append(budget_bytes), original(self, budget_bytes))[1])
    backbone = Backbone("tf_efficientnet_lite0", layers, pretrained=False)
    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    train = [{"image": images[:4]}]
    held = method_class(name)(backbone, layers, **params).fit(train)
    spilled = method_class(name)(backbone, layers, **params).fit(train, memory_budget=1)
    assert budgets == [None, 1]
    np.testing.assert_allclose(spilled.predict(images[4:]).image_scores, held.predict(images[4:]).image_scores, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loop_shares_the_picks_of_the_cpu_path():
    points = clustered(n_clusters=30, per_cluster=100, dims=32)
    gpu = greedy_coreset(torch.from_numpy(points).cuda(), 300).cpu()
    shared = len(set(gpu.tolist()) & set(greedy_coreset(points, 300).tolist())) / 300
    assert shared >= 0.99
