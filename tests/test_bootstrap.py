"""Test-set uncertainty: DeLong against its definition and against simulation, the BCa bootstrap and the score
interval against DeLong's interval and a known true AUROC, and paired comparisons."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from adbench.errors import DataError
from adbench.metrics import StratifiedBootstrap, confidence_intervals, paired
from adbench.metrics.delong import auroc_interval, delong, paired_test
from adbench.metrics.intervals import bca
from adbench.metrics.per_image import per_image_table
from adbench.metrics.weighted import WeightedMetrics


def table(labels: np.ndarray, scores: np.ndarray):
    labels = np.asarray(labels).astype(bool)
    return per_image_table([f"{i}.png" for i in range(labels.size)], labels, ["x" if l else "good" for l in labels], scores)


def binormal(rng: np.random.Generator, n_normal: int, n_anomalous: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Normal ~ N(0, 1), anomalous ~ N(shift, 1): true AUROC = Phi(shift / sqrt 2)."""
    labels = np.r_[np.zeros(n_normal, bool), np.ones(n_anomalous, bool)]
    return labels, rng.normal(size=labels.size) + shift * labels


def structural_components(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's definition, pair by pair: psi(x, y) = 1 if x > y, 1/2 if tied; V10 and V01 are its row and column means."""
    x, y = scores[labels], scores[~labels]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    return psi.mean(1), psi.mean(0)


@pytest.mark.parametrize("seed", range(3))
def test_delong_matches_its_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(60) < 0.4
    a = np.round(rng.normal(size=60) + labels, 1)  # ties included
    b = np.round(a + rng.normal(size=60), 1)
    auc, cov = delong(np.stack([a, b]), labels)
    components = [structural_components(s, labels) for s in (a, b)]
    m, n = labels.sum(), (~labels).sum()
    expected = np.cov([c[0] for c in components]) / m + np.cov([c[1] for c in components]) / n
    assert auc == pytest.approx([roc_auc_score(labels, a), roc_auc_score(labels, b)], abs=1e-12)
    assert cov == pytest.approx(expected, abs=1e-12)
    z = (auc[0] - auc[1]) / np.sqrt(expected[0, 0] + expected[1, 1] - 2 * expected[0, 1])
    assert paired_test(a, b, labels)["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)), abs=1e-12)


def test_delong_variance_matches_simulation() -> None:
    rng = np.random.default_rng(0)
    aucs, variances = [], []
    for _ in range(2000):
        labels, scores = binormal(rng, 50, 50, 1.0)
        auc, cov = delong(scores, labels)
        aucs.append(auc[0])
        variances.append(cov[0, 0])
    assert np.mean(variances) / np.var(aucs, ddof=1) == pytest.approx(1.0, abs=0.1)


def test_delong_paired_test_holds_its_level_and_has_power() -> None:
    rng = np.random.default_rng(1)
    null_p, alternative_p = [], []
    for _ in range(500):
        labels, signal = binormal(rng, 50, 50, 1.0)
        a, b = signal + rng.normal(size=100), signal + rng.normal(size=100)  # equally good, correlated
        null_p.append(paired_test(a, b, labels)["p_value"])
        labels, signal = binormal(rng, 50, 50, 2.0)  # AUROC 0.92 against 0.78
        alternative_p.append(paired_test(signal + 0.2 * rng.normal(size=100), signal + 1.5 * rng.normal(size=100), labels)["p_value"])
    assert 0.02 <= np.mean(np.array(null_p) < 0.05) <= 0.08
    assert np.mean(np.array(alternative_p) < 0.05) >= 0.8


@pytest.mark.parametrize("seed", range(3))
def test_bootstrap_interval_agrees_with_delong(seed: int) -> None:
    """Away from the ceiling, with 150 images a class, the BCa interval of the stratified bootstrap and the
    score interval both agree with DeLong's normal-approximation interval."""
    labels, scores = binormal(np.random.default_rng(seed), 150, 150, 1.2)
    t = table(labels, scores)
    resampled = WeightedMetrics(t)(StratifiedBootstrap(seed=seed).weights(labels), ("image_auroc",))["image_auroc"]
    jackknife = WeightedMetrics(t)(np.ones((300, 300)) - np.eye(300), ("image_auroc",))["image_auroc"]
    auc, analytic = auroc_interval(scores, labels)
    assert bca(auc, resampled, jackknife) == pytest.approx(analytic, abs=0.01)
    assert confidence_intervals(t)["image_auroc"] == pytest.approx(analytic, abs=0.01)


def test_interval_covers_the_true_auroc() -> None:
    rng = np.random.default_rng(2)
    true = stats.norm.cdf(1.0 / np.sqrt(2))
    repetitions = 300
    covered = 0
    for r in range(repetitions):
        labels, scores = binormal(rng, 40, 60, 1.0)
        low, high = confidence_intervals(table(labels, scores), seed=r)["image_auroc"]
        covered += low <= true <= high
    assert 0.90 <= covered / repetitions <= 0.99


def test_resamples_are_stratified_and_seeded() -> None:
    labels = np.r_[np.zeros(7, bool), np.ones(13, bool)]
    weights = StratifiedBootstrap(resamples=500, seed=3).weights(labels)
    assert weights.shape == (500, 20)
    assert (weights[:, ~labels].sum(1) == 7).all() and (weights[:, labels].sum(1) == 13).all()
    assert np.array_equal(weights, StratifiedBootstrap(resamples=500, seed=3).weights(labels))
    assert not np.array_equal(weights, StratifiedBootstrap(resamples=500, seed=4).weights(labels))
    # each image drawn with probability 1/class size per draw: mean count 1 (standard error ~0.007 here)
    assert StratifiedBootstrap(resamples=20000, seed=3).weights(labels).mean(0) == pytest.approx(np.ones(20), abs=0.04)


def test_paired_comparison_of_a_method_with_itself_and_a_worse_one() -> None:
    rng = np.random.default_rng(5)
    labels, signal = binormal(rng, 60, 90, 1.5)
    good, worse = table(labels, signal), table(labels, signal + 1.5 * rng.normal(size=labels.size))
    same = paired(good, good, "image_ap")
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0] and same["p_value"] == 1.0
    better = paired(good, worse, "image_auroc")
    assert better["test"] == "DeLong" and better["p_value"] < 0.01 and better["ci95"][0] > 0
    assert better["p_value"] == pytest.approx(paired_test(good["score"], worse["score"], labels)["p_value"])
    assert better["difference"] == pytest.approx(roc_auc_score(labels, good["score"]) - roc_auc_score(labels, worse["score"]))
    shuffled = worse.sample(frac=1.0, random_state=0).reset_index(drop=True)  # row order does not matter, paths do
    assert paired(good, shuffled, "image_auroc") == better
    ap = paired(good, worse, "image_ap")
    assert ap["test"] == "paired bootstrap" and ap["p_value"] < 0.01 and ap["ci95"][0] > 0
    assert paired(good, worse, "aupro")["reason"] == "a per-image table has no pixel columns"


def test_paired_bootstrap_p_value_holds_its_level() -> None:
    rng = np.random.default_rng(6)
    rejected = 0
    for r in range(200):
        labels, signal = binormal(rng, 40, 40, 1.0)
        a, b = table(labels, signal + rng.normal(size=80)), table(labels, signal + rng.normal(size=80))
        rejected += paired(a, b, "image_ap", resamples=500, seed=r)["p_value"] < 0.05
    assert 0.01 <= rejected / 200 <= 0.10


def test_paired_needs_the_same_test_images() -> None:
    labels, scores = binormal(np.random.default_rng(7), 5, 5, 1.0)
    a = table(labels, scores)
    with pytest.raises(DataError, match="different test images"):
        paired(a, a.iloc[1:], "image_auroc")
    relabelled = a.copy()
    relabelled["label"] = relabelled["label"][::-1].to_numpy()
    with pytest.raises(DataError, match="label the same images differently"):
        paired(a, relabelled, "image_auroc")
