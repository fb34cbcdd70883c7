"""Statistics where the benchmark lives: intervals near AUROC 1 (coverage, never zero width), BCa against
scipy's, tied pixel scores against scikit-learn, tie marks that hold the family-wise error, every seed in
the paired test, and the Friedman test before any post-hoc test (Demšar 2006)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score
from test_bootstrap import binormal, structural_components, table

from adbench.metrics import confidence_intervals, table_metrics
from adbench.metrics.delong import paired_test
from adbench.metrics.intervals import bca, binormal_variance, pooled_intervals
from adbench.metrics.per_image import per_image_table
from adbench.metrics.registry import METRICS
from adbench.results.report import rank_section
from adbench.results.stats import rank_test, tie_test

# --- intervals ------------------------------------------------------------------------------------------------

def test_image_auroc_interval_covers_a_true_auroc_near_one() -> None:
    """Bottle's test size, true AUROC 0.995: the percentile bootstrap covered it 71% of the time; the score interval
    must be near 95% (200 repetitions: binomial standard error 0.015), and never of zero width."""
    rng = np.random.default_rng(11)
    truth, covered, widths = 0.995, 0, []
    for r in range(200):
        labels, scores = binormal(rng, 20, 63, np.sqrt(2) * stats.norm.ppf(truth))
        low, high = confidence_intervals(table(labels, scores), seed=r)["image_auroc"]
        covered += low <= truth <= high
        widths.append(high - low)
    assert 0.91 <= covered / 200 <= 0.99
    assert min(widths) > 0.01


def test_perfect_separation_gets_an_interval_below_one() -> None:
    labels = np.r_[np.zeros(20, bool), np.ones(63, bool)]
    found = confidence_intervals(table(labels, labels + np.linspace(0, 0.5, 83)))
    low, high = found["image_auroc"]
    assert high == 1.0 and 0.9 < low < 0.99
    z2 = stats.norm.ppf(0.975) ** 2  # every resample AP = 1: Wilson's bound for 63 of 63, m / (m + z²)
    assert found["image_ap"] == pytest.approx([63 / (63 + z2), 1.0]) and found["image_f1_max"] == pytest.approx([63 / (63 + z2), 1.0])


def test_binormal_variance_matches_its_model() -> None:
    """Owen's-T form of P(X1 > Y, X2 > Y) against scipy's bivariate normal, and the variance against simulation."""
    theta = 0.97
    d = stats.norm.ppf(theta)
    orthant = stats.multivariate_normal([0, 0], [[1, 0.5], [0.5, 1]]).cdf([d, d])
    m, n = 40, 30
    assert binormal_variance(theta, n, m) == pytest.approx((theta * (1 - theta) + (m + n - 2) * (orthant - theta**2)) / (m * n), rel=1e-4)
    rng = np.random.default_rng(3)
    aucs = [structural_components(*reversed(binormal(rng, n, m, np.sqrt(2) * d)))[0].mean() for _ in range(3000)]
    assert np.var(aucs, ddof=1) / binormal_variance(theta, n, m) == pytest.approx(1.0, abs=0.1)


def test_bca_agrees_with_scipy() -> None:
    data = np.random.default_rng(4).exponential(size=40)  # skewed: BCa moves away from the percentile interval
    ours_draws = np.random.default_rng(5).choice(data, size=(20000, data.size)).mean(1)
    jackknife = (data.sum() - data) / (data.size - 1)
    ours = bca(data.mean(), ours_draws, jackknife)
    theirs = stats.bootstrap((data,), np.mean, n_resamples=20000, method="BCa", random_state=6).confidence_interval
    assert ours == pytest.approx([theirs.low, theirs.high], abs=0.02)
    percentile = np.percentile(ours_draws, [2.5, 97.5])
    assert ours[1] - percentile[1] > 0.01  # the skew correction is there


def test_pixel_ap_with_tied_scores_is_scikit_learns() -> None:
    """Maps rounded to 1/20: one bin per score value, so the binned AP must be the exact one (in-bin interpolation gave 0.49 vs 0.45)."""
    rng = np.random.default_rng(8)
    masks = np.zeros((12, 24, 24), bool)
    masks[6:, 8:14, 6:16] = True
    maps = np.clip(np.round((rng.normal(size=masks.shape) * 0.15 + 0.35 + 0.2 * masks) * 20) / 20, 0, 1)
    labels = masks.any((1, 2))
    t = per_image_table([str(i) for i in range(12)], labels, ["x" if y else "good" for y in labels], rng.random(12), maps, masks)
    assert table_metrics(t)["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_several_seeds_pool_images_and_seeds() -> None:
    rng = np.random.default_rng(9)
    labels, signal = binormal(rng, 40, 60, 1.5)
    seeds = [table(labels, signal + 0.3 * rng.normal(size=100)) for _ in range(3)]
    pooled = pooled_intervals(seeds, metrics=("image_auroc", "image_ap"))
    mean = {m: np.mean([table_metrics(t)[m] for t in seeds]) for m in ("image_auroc", "image_ap")}
    for metric, (low, high) in pooled.items():
        assert low < mean[metric] < high
    apart = [table(labels, signal + 0.3 * rng.normal(size=100) + 0.4 * s * labels) for s in range(3)]  # seeds that disagree
    spread = np.std([table_metrics(t)["image_auroc"] for t in apart], ddof=1) / np.sqrt(3)
    low, high = pooled_intervals(apart, metrics=("image_auroc",))["image_auroc"]
    assert high - low > 2 * 1.96 * spread * 0.99  # at least the seeds' own interval


# --- tie marks ------------------------------------------------------------------------------------------------

def scorings(rng: np.random.Generator, labels: np.ndarray, shifts: list[float]) -> list[list[pd.DataFrame]]:
    shared = rng.normal(size=labels.size)
    return [[table(labels, (shared + rng.normal(size=labels.size)) / np.sqrt(2) + s * labels)] for s in shifts]


def test_tie_marks_hold_the_family_wise_error() -> None:
    """7 equally good configurations: unadjusted DeLong against the observed best marks one 'worse' far more than
    5% of the time; the step-down max-T marks hardly any (120 cells: binomial standard error 0.02)."""
    rng = np.random.default_rng(10)
    labels = np.r_[np.zeros(20, bool), np.ones(63, bool)]
    marked = naive = 0
    for r in range(120):
        groups = scorings(rng, labels, [0.9] * 7)
        marked += tie_test(groups, "image_auroc", seed=r).worse.any()
        scores = [g[0]["score"].to_numpy() for g in groups]
        best = int(np.argmax([stats.mannwhitneyu(s[labels], s[~labels]).statistic for s in scores]))
        naive += any(paired_test(scores[best], s, labels)["p_value"] < 0.05 for i, s in enumerate(scores) if i != best)
    assert marked / 120 <= 0.08 and naive / 120 >= 0.2


def test_a_clearly_worse_configuration_is_marked() -> None:
    rng = np.random.default_rng(12)
    labels = np.r_[np.zeros(147, bool), np.ones(313, bool)]
    result = tie_test(scorings(rng, labels, [2.0] * 6 + [1.2]), "image_auroc")
    assert result.worse.tolist() == [False] * 6 + [True]


def test_every_seed_enters_the_paired_test() -> None:
    """Two configurations, three seeds each: the one pair's p is DeLong's two-sided (t) p of the difference of seed means,
    its variance from the structural components of all six scorings plus each side's between-seed variance / 3."""
    rng = np.random.default_rng(13)
    labels, signal = binormal(rng, 30, 50, 1.2)
    groups = [[table(labels, signal + sd * rng.normal(size=80)) for _ in range(3)] for sd in (0.6, 1.0)]
    components = [[structural_components(t["score"].to_numpy(), labels) for t in g] for g in groups]
    v10 = [np.mean([c[0] for c in g], axis=0) for g in components]  # the seed mean's structural components
    v01 = [np.mean([c[1] for c in g], axis=0) for g in components]
    m, n = labels.sum(), (~labels).sum()
    difference_variance = np.var(v10[0] - v10[1], ddof=1) / m + np.var(v01[0] - v01[1], ddof=1) / n
    aucs = [[c[0].mean() for c in g] for g in components]
    difference_variance += sum(np.var(a, ddof=1) / 3 for a in aucs)
    z = (np.mean(aucs[0]) - np.mean(aucs[1])) / np.sqrt(difference_variance)
    result = tie_test(groups, "image_auroc")
    assert result.p_adjusted[0, 1] == pytest.approx(2 * stats.t.sf(abs(z), min(m, n) - 1), abs=0.01)  # t: df of the smaller class


# --- rank tests -----------------------------------------------------------------------------------------------

def board(values: np.ndarray) -> pd.DataFrame:
    rows = [{"name": f"m{j}", "backbone": "b", "dataset": "d", "category": f"c{i}", "image_size": 224, "setting": "full", "degrade": None,
             **dict.fromkeys(METRICS, np.nan), "image_auroc": values[i, j]} for i in range(values.shape[0]) for j in range(values.shape[1])]
    return pd.DataFrame(rows)


def test_friedman_permutation_p_below_five_blocks_is_exact() -> None:
    values = np.array([[0.9, 0.8, 0.7], [0.85, 0.9, 0.6], [0.95, 0.7, 0.8]])
    test = rank_test(board(values), "image_auroc")
    observed = stats.friedmanchisquare(*values.T).statistic
    arrangements = [stats.friedmanchisquare(*np.array([row[list(p)] for row, p in zip(values, combo)]).T).statistic
                    for combo in itertools.product(itertools.permutations(range(3)), repeat=3)]
    assert test.p_value == pytest.approx(np.mean(np.array(arrangements) >= observed - 1e-9))
    assert test.distribution == "exact permutation distribution"


def test_friedman_non_rejection_runs_no_post_hoc(tmp_path) -> None:
    values = np.random.default_rng(14).uniform(0.8, 0.9, size=(6, 4))
    test = rank_test(board(values), "image_auroc")
    assert test.p_value > 0.05 and test.posthoc is None and not test.rejected
    assert test.p_value == pytest.approx(stats.f.sf(test.f_statistic, 3, 15))
    from types import SimpleNamespace

    text = "\n".join(rank_section(SimpleNamespace(board=board(values), plots_dir=tmp_path / "plots")))
    assert "No significant difference across 6 blocks" in text
    assert "Nemenyi" not in text.split("**I-AUROC**")[1] and "critical difference I-AUROC" not in text
    assert not list(tmp_path.glob("plots/*.png"))
