"""Same config and seed → identical scores on CPU; the record holds the seed; the memory budget changes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_config, run_overrides
from sklearn.metrics import roc_auc_score
from test_model_io import fit_tiny, shared_fit, tiny_config

from adbench import pipeline
from adbench.data.splits import data_base
from adbench.features.nn_search import NearestNeighbours
from adbench.methods import available_methods
from adbench.metrics.per_image import read_per_image

RUN = ["dataset=synthetic", "dataset.seed=0", "dataset.size=64", "dataset.resize=64", "dataset.crop=64", "dataset.n_train=6",
       "dataset.n_test=2", "device=cpu", "method.coreset_ratio=0.25"]  # fmt: skip


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


def test_runs_with_one_seed_score_identically(synthetic_root, tmp_path, monkeypatch) -> None:
    outputs = []
    score = pipeline.score_batches

    def keep(*args, **kwargs):
        outputs.append(score(*args, **kwargs))
        return outputs[-1]

    monkeypatch.setattr(pipeline, "score_batches", keep)
    overrides = [*RUN, f"dataset.root={synthetic_root}"]
    first = run_overrides([*overrides, "seed=7"], tmp_path / "a")
    second = run_overrides([*overrides, "seed=7"], tmp_path / "b")
    other = run_overrides([*overrides, "seed=8"], tmp_path / "c")  # same data (dataset.seed=0), other coreset
    assert first["seed"] == second["seed"] == first["config"]["seed"] == 7 and other["seed"] == 8
    assert first["config_hash"] == second["config_hash"] != other["config_hash"]
    np.testing.assert_array_equal(outputs[0].scores, outputs[1].scores)
    np.testing.assert_array_equal(outputs[0].maps, outputs[1].maps)
    assert first["metrics"] == second["metrics"]
    assert not np.array_equal(outputs[0].scores, outputs[2].scores)  # the seed does reach the method


def test_the_pipeline_step_scores_what_the_run_records(tmp_path) -> None:
    """``fit_and_score(cfg)``, the step the benchmarks call, gives the run's own scores: the per-image table's,
    image for image, and the record's image AUROC is scikit-learn's on them."""
    overrides = [o for o in RUN if not o.startswith("dataset.n_test")] + ["dataset.n_test=8", f"dataset.root={tmp_path / 'data'}", "seed=7"]
    record = run_overrides(overrides, tmp_path / "results")
    step, scored = pipeline.fit_and_score(make_config(overrides))
    table = read_per_image(next((tmp_path / "results" / "records").glob("*.per_image.parquet")))
    base = data_base(step.split)
    assert table["path"].tolist() == [Path(p).relative_to(base).as_posix() for p in scored.paths]
    np.testing.assert_array_equal(table["score"].to_numpy(), scored.scores)
    assert 0 < scored.labels.sum() < len(scored.labels)
    assert record["metrics"]["image_auroc"] == pytest.approx(roc_auc_score(scored.labels, scored.scores))
    assert record["n_train"] == len(step.train) and step.fit_seconds > 0


@pytest.mark.parametrize("name", available_methods())
def test_every_method_is_deterministic_for_a_seed(name) -> None:
    first = shared_fit(name)  # the round-trip test's fit, when it ran first
    second = fit_tiny(first.cfg)
    a, b = first.method.predict(first.images), second.method.predict(second.images)
    np.testing.assert_array_equal(a.image_scores, b.image_scores)
    if a.maps is not None:
        np.testing.assert_array_equal(a.maps, b.maps)
    for key, value in first.method.fitted_state().items():
        assert torch.equal(value, second.method.fitted_state()[key]), key


def test_scores_do_not_depend_on_the_memory_budget(synthetic_root) -> None:
    fitted = fit_tiny(tiny_config("patchcore", synthetic_root, "dataset.seed=0"))
    method, images = fitted.method, fitted.images
    n_queries = images.shape[0] * (images.shape[-1] // 8) ** 2  # patches at the stride-8 layer
    assert n_queries > 4 * 1024 // (4 * method.bank.shape[1])  # the smallest budget really splits the queries
    for backend in ("torch", "faiss"):
        method.nn = NearestNeighbours(backend, "cpu", 2**30).fit(method.bank)  # everything in one block
        reference = method.predict(images)
        for budget in (4 * 1024, 64 * 1024):  # a few rows per block
            method.nn = NearestNeighbours(backend, "cpu", budget).fit(method.bank)
            out = method.predict(images)
            np.testing.assert_allclose(out.image_scores, reference.image_scores, rtol=1e-5, err_msg=f"{backend} {budget}")
            np.testing.assert_allclose(out.maps, reference.maps, rtol=1e-5, atol=1e-4 * float(np.abs(reference.maps).max()), err_msg=f"{backend} {budget}")
