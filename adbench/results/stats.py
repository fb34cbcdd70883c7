"""Is a difference real? Ties with the best configuration per leaderboard cell, and ranks across categories and datasets.

- :func:`mark_ties`: per cell (section, category) and metric, the best configuration (highest mean; lowest for a metric
  where lower is better) and, for every other one, whether it is significantly worse. All configurations of a cell scored on the same test
  images are compared at once, every pair, by the step-down max-T procedure (Westfall & Young 1993, ch. 2;
  Hothorn, Bretz & Westfall 2008, Biom J 50:346): the family-wise error of all "significantly worse" marks
  together stays at α = 0.05 however many configurations a cell has, and picking the best after looking
  is part of the family (a configuration is marked worse only when some other is significantly better).
  The joint null distribution of the configurations' estimates is DeLong's covariance over all their
  scorings for image AUROC (multivariate t draws, df = the smaller class's images - 1: with 20 normal
  images Gaussian draws let the family-wise error reach 0.07), and for the other metrics the paired stratified
  bootstrap over test images, widened by sqrt(n / (n - 1)) (Hesterberg 2015) and mixed into a multivariate t the
  same way (plain bootstrap draws: family-wise error 0.06-0.08 on pixel AUROC and AUPRO with 20 normal images). A configuration with several seeds enters with its seed mean: every seed's scoring
  is in the joint distribution, plus its between-seed variance / seeds. A configuration without a
  per-image table, or scored on other test images, is not tested (and says so).
- :func:`rank_test`: average ranks over blocks (one dataset/category each, counted once), the Friedman test
  with Iman & Davenport's F (Demšar 2006, JMLR 7), its exact or permutation distribution below 5 blocks,
  and only when it rejects the Nemenyi post-hoc test with the critical-difference diagram.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from math import factorial
from pathlib import Path

import numpy as np
import pandas as pd
import scikit_posthocs as sp
from scipy import stats

from ..errors import DataError
from ..metrics.bootstrap import RESAMPLES, StratifiedBootstrap
from ..metrics.delong import delong
from ..metrics.intervals import pooled_intervals, smaller_class
from ..metrics.per_image import read_per_image
from ..metrics.registry import BY_NAME, HEADLINE, METRICS
from ..metrics.weighted import WeightedMetrics
from .plots import critical_difference_diagram
from .table import REPLICATE, SECTION, STANDARD

ALPHA = 0.05
TIE_METRICS = [m.name for m in HEADLINE]
LABEL = 48  # characters of a configuration name in the CD diagram
DRAWS = 20000  # Gaussian draws of DeLong's joint distribution
PERMUTATIONS = 20000  # Monte Carlo permutations of the Friedman statistic below 5 blocks (exact when fewer arrangements)
MIN_BLOCKS = 5  # from here the F distribution of Iman & Davenport's statistic is used
PROCEDURE = "step-down max-T over all pairs (Westfall & Young 1993), family-wise error α = 0.05 per cell and metric"

# a per-image table by its path relative to the results folder, or None when it cannot be read
TableReader = Callable[[str], "pd.DataFrame | None"]


def table_reader(results_dir: Path) -> TableReader:
    """Reads per-image tables under ``results_dir`` (cached: a cell reads each once); None for an unreadable one."""

    @lru_cache(maxsize=256)
    def read(name: str) -> pd.DataFrame | None:
        try:
            return read_per_image(Path(results_dir) / name)
        except DataError:
            return None

    return read


@dataclass
class TieTest:
    """Configurations (seed means) of one cell on the same test images, compared pairwise at once."""

    estimate: np.ndarray  # (k,) the seed means compared
    p_adjusted: np.ndarray  # (k, k) step-down max-T adjusted p-values, symmetric, 1 on the diagonal
    alpha: float = ALPHA

    @property
    def worse(self) -> np.ndarray:
        """(k,) True where some other configuration is significantly better."""
        better = self.estimate[None, :] > self.estimate[:, None]  # [i, j]: j better than i
        return ((self.p_adjusted < self.alpha) & better).any(axis=1)


def _null_draws(groups: list[list[pd.DataFrame]], metric: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(estimates (k,), centred draws (D, k)) of the configurations' seed means over test images."""
    labels = groups[0][0]["label"].to_numpy().astype(bool)
    sizes = [len(g) for g in groups]
    owner = np.repeat(np.arange(len(groups)), sizes)
    average = np.zeros((len(groups), owner.size))
    average[owner, np.arange(owner.size)] = 1.0 / np.asarray(sizes)[owner]
    tables = [t for g in groups for t in g]
    rng = np.random.default_rng(seed)
    df = max(smaller_class(labels) - 1, 1)
    if metric == "image_auroc":
        auc, cov = delong(np.stack([t["score"].to_numpy() for t in tables]), labels)
        values, joint = auc, average @ np.nan_to_num(cov) @ average.T
        draws = rng.multivariate_normal(np.zeros(len(groups)), joint, size=DRAWS, method="eigh")
    else:
        weights = StratifiedBootstrap(RESAMPLES, seed).weights(labels)
        evaluators = [WeightedMetrics(t) for t in tables]
        values = np.array([e(np.ones((1, len(labels))), (metric,))[metric][0] for e in evaluators])
        draws = np.stack([e(weights, (metric,))[metric] for e in evaluators], axis=1) @ average.T - average @ values
        draws *= np.sqrt((df + 1) / df)  # the bootstrap spreads as n - 1 images do, n the smaller class (Hesterberg 2015)
    # multivariate t with n - 1 degrees of freedom: the variance behind the draws comes from few images of a class and is
    # itself noisy (without it, 7-12 equal configurations at 20 normal images: family-wise error 0.06-0.08 on pixel metrics)
    draws /= np.sqrt(rng.chisquare(df, size=(len(draws), 1)) / df)
    estimate = average @ values
    seed_var = np.array([np.var(values[owner == c], ddof=1) / n if n > 1 else 0.0 for c, n in enumerate(sizes)])
    return estimate, draws + rng.normal(size=draws.shape) * np.sqrt(seed_var)


def tie_test(groups: list[list[pd.DataFrame]], metric: str, seed: int = 0, alpha: float = ALPHA,
             estimate: np.ndarray | None = None) -> TieTest:
    """Every pair of configurations (``groups``: each one's seed tables, all on the same test images, aligned by
    path) by the step-down max-T test; ``estimate``: the values to compare (default: the tables' seed means)."""
    groups = [[_aligned_to(t, groups[0][0]) for t in g] for g in groups]
    own, draws = _null_draws(groups, metric, seed)
    estimate = own if estimate is None else np.asarray(estimate, dtype=float)
    k = len(groups)
    pairs = list(itertools.combinations(range(k), 2))
    adjusted = np.ones((k, k))
    if pairs:
        i, j = np.array(pairs).T
        draws = draws[~np.isnan(draws).any(axis=1)]
        se = np.std(draws[:, i] - draws[:, j], axis=0)
        safe = np.where(se > 0, se, 1.0)
        observed = np.where(se > 0, np.abs(estimate[i] - estimate[j]) / safe, 0.0)
        null = np.where(se > 0, np.abs(draws[:, i] - draws[:, j]) / safe, 0.0)
        order = np.argsort(-observed)
        successive = np.maximum.accumulate(null[:, order][:, ::-1], axis=1)[:, ::-1]  # max over the not-yet-tested
        p = np.maximum.accumulate((successive >= observed[order]).mean(axis=0))
        adjusted[i[order], j[order]] = adjusted[j[order], i[order]] = p
    return TieTest(estimate, adjusted, alpha)


def _aligned_to(table: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    if table is reference:
        return table
    out = table.set_index("path").loc[reference["path"]].reset_index()
    out.attrs = dict(table.attrs)
    return out


def _test_set(table: pd.DataFrame) -> frozenset:
    return frozenset(zip(table["path"], table["label"]))


def _seed_tables(runs: pd.DataFrame, read: TableReader | None) -> list[pd.DataFrame] | None:
    """Every seed's per-image table of one configuration, or None if any is missing or unreadable."""
    if read is None or runs.per_image.isna().any():
        return None
    tables = [read(name) for name in runs.per_image]
    return None if any(t is None for t in tables) or len({_test_set(t) for t in tables}) > 1 else tables


def mark_ties(board: pd.DataFrame, runs: pd.DataFrame, read: TableReader | None = None, alpha: float = ALPHA) -> pd.DataFrame:
    """``board`` (from :func:`adbench.results.table.leaderboard`) with, per metric of :data:`TIE_METRICS`,
    ``<metric>_best``, ``_tested``, ``_worse`` (significantly worse than some configuration, hence than the
    best), ``_tie`` (tested and not worse) and ``_p_vs_best`` (adjusted p of the pair with the best).
    Degraded runs neither win nor tie (another test set). ``runs``: the current runs; ``read``: their tables."""
    board = board.copy()
    for metric in TIE_METRICS:
        board[[f"{metric}_best", f"{metric}_tested", f"{metric}_worse", f"{metric}_tie"]] = False
        board[f"{metric}_p_vs_best"] = np.nan
    if board.empty:
        return board
    by_key = dict(tuple(runs.groupby(REPLICATE)))
    for _, cell in board[board.degrade.isna()].groupby([*SECTION, "category"], dropna=False):
        tables = {i: _seed_tables(by_key[tuple(cell.loc[i, REPLICATE])], read) for i in cell.index}
        for metric in TIE_METRICS:
            scored = cell[cell[metric].notna()]
            if scored.empty:
                continue
            oriented = scored[metric] * (1.0 if BY_NAME[metric].higher_is_better else -1.0)  # higher = better
            winners = scored.index[oriented == oriented.max()]
            board.loc[winners, f"{metric}_best"] = True
            best = tables[winners[0]]
            if best is None:
                continue
            tested = [i for i in scored.index if tables[i] is not None and _test_set(tables[i][0]) == _test_set(best[0])]
            if len(tested) < 2:
                continue
            result = tie_test([tables[i] for i in tested], metric, alpha=alpha, estimate=oriented.loc[tested].to_numpy())
            at_best = tested.index(winners[0])
            for position, index in enumerate(tested):
                worse = bool(result.worse[position])
                board.loc[index, [f"{metric}_tested", f"{metric}_worse"]] = [True, worse]
                board.loc[index, f"{metric}_tie"] = not worse and index not in winners
                if index not in winners:
                    board.loc[index, f"{metric}_p_vs_best"] = result.p_adjusted[position, at_best]
    return board


def seed_intervals(board: pd.DataFrame, runs: pd.DataFrame, read: TableReader | None, level: float = 0.95) -> pd.DataFrame:
    """``board`` with each several-seed row's ``<metric>_ci_low/_high``: the interval of the seed mean over test
    images and seeds (:func:`adbench.metrics.intervals.pooled_intervals`); NaN where the seeds' tables are missing."""
    board = board.copy()
    by_key = dict(tuple(runs.groupby(REPLICATE)))
    for index in board.index[board.n_seeds > 1]:
        tables = _seed_tables(by_key[tuple(board.loc[index, REPLICATE])], read)
        if tables is None:
            continue
        for metric, interval in pooled_intervals(tables, level).items():
            if metric in METRICS and interval is not None:
                board.loc[index, [f"{metric}_ci_low", f"{metric}_ci_high"]] = interval
    return board


# --- across categories and datasets: ranks, Friedman, Nemenyi, CD diagram ----------------------------------------

def nemenyi_cd(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical difference of average ranks, q_α √(k(k+1)/6N) (Demšar 2006); q_α is the
    studentized range quantile over √2."""
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2)
    return float(q * np.sqrt(k * (k + 1) / (6 * n)))


def complete_blocks(table: pd.DataFrame) -> pd.DataFrame:
    """The largest complete block x treatment table found greedily: repeatedly drop the treatment or block
    with the largest share of missing cells (treatments first on equal shares)."""
    table = table.dropna(how="all").dropna(axis=1, how="all")
    while table.isna().any().any():
        column_gap, row_gap = table.isna().mean(), table.isna().mean(axis=1)
        if column_gap.max() >= row_gap.max():
            table = table.drop(columns=column_gap.idxmax())
        else:
            table = table.drop(index=row_gap.idxmax())
    return table


@dataclass
class RankTest:
    """Friedman (Iman-Davenport F) over a complete block x treatment table of one metric; Nemenyi only when it rejects."""

    metric: str
    table: pd.DataFrame  # blocks x treatments, the metric's mean over seeds (and image sizes)
    ranks: pd.Series  # average rank per treatment, 1 = best, ascending
    statistic: float  # Friedman's χ² from the average ranks (Demšar's formula, no tie correction)
    f_statistic: float  # Iman & Davenport's F = (N - 1) χ² / (N (k - 1) - χ²)
    p_value: float
    distribution: str  # how p was found
    posthoc: pd.DataFrame | None  # Nemenyi p-values, treatments x treatments; None when Friedman does not reject
    cd: float
    alpha: float = ALPHA
    left_out: list[str] = field(default_factory=list)  # treatments without a value on every block

    @property
    def rejected(self) -> bool:
        return self.p_value < self.alpha


def rank_table(board: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Blocks (dataset/category, each once) x treatments (configuration, with backbone when several) of clean
    standard-setting rows; a configuration run at several image sizes on a block enters with its mean over them;
    NaN where a configuration was not run on a block."""
    clean = board[board.degrade.isna() & (board.setting == STANDARD) & board[metric].notna()]
    several = clean.backbone.nunique() > 1
    treatment = clean.name + (" · " + clean.backbone if several else "")
    block = clean.dataset + "/" + clean.category.astype(str)
    return clean.assign(treatment=treatment, block=block).pivot_table(index="block", columns="treatment", values=metric, aggfunc="mean")


def friedman_p(ranks: np.ndarray, statistic: float, seed: int = 0) -> tuple[float, str]:
    """p of Friedman's statistic for ``ranks`` (blocks x treatments): the F distribution of Iman & Davenport's
    statistic from :data:`MIN_BLOCKS` blocks; below, the permutation distribution (each block's ranks permuted,
    ties kept), exact when there are at most :data:`PERMUTATIONS` arrangements, Monte Carlo otherwise."""
    n, k = ranks.shape
    if n >= MIN_BLOCKS:
        f = np.inf if statistic >= n * (k - 1) else (n - 1) * statistic / (n * (k - 1) - statistic)
        return float(stats.f.sf(f, k - 1, (k - 1) * (n - 1))), "Iman-Davenport F distribution"
    observed = np.sum(ranks.sum(0) ** 2)  # Friedman's statistic is increasing in the sum of squared rank sums
    if factorial(k) ** (n - 1) <= PERMUTATIONS:  # the first block fixed: the statistic is invariant to relabelling
        orders = [list(itertools.permutations(range(k)))] * (n - 1)
        sums = np.array([ranks[0] + sum(ranks[b + 1][list(p)] for b, p in enumerate(combo)) for combo in itertools.product(*orders)])
        return float(np.mean(np.sum(sums**2, 1) >= observed - 1e-9)), "exact permutation distribution"
    rng = np.random.default_rng(seed)
    permuted = np.take_along_axis(np.broadcast_to(ranks, (PERMUTATIONS, n, k)), rng.random((PERMUTATIONS, n, k)).argsort(-1), -1)
    hits = np.sum(np.sum(permuted.sum(1) ** 2, 1) >= observed - 1e-9)
    return float((hits + 1) / (PERMUTATIONS + 1)), f"permutation distribution ({PERMUTATIONS} Monte Carlo permutations)"


def rank_test(board: pd.DataFrame, metric: str, alpha: float = ALPHA) -> RankTest | str:
    """The test over the configurations run on every block kept, or a sentence saying why there is none."""
    full = rank_table(board, metric)
    table = complete_blocks(full)
    k, n = table.shape[1], table.shape[0]
    if k < 3 or n < 2:
        return f"needs at least 3 configurations run on the same 2 or more blocks; found {k} on {n}"
    if (table.nunique(axis=1) == 1).all():
        return f"all {k} configurations score the same on every block"
    block_ranks = table.rank(axis=1, ascending=not BY_NAME[metric].higher_is_better)
    statistic = float(12 * n / (k * (k + 1)) * (np.sum(block_ranks.mean() ** 2) - k * (k + 1) ** 2 / 4))  # Demšar (2006), eq. 1
    p_value, distribution = friedman_p(block_ranks.to_numpy(), statistic)
    f = np.inf if statistic >= n * (k - 1) else (n - 1) * statistic / (n * (k - 1) - statistic)
    ranks = block_ranks.mean()
    ranks = ranks.iloc[np.lexsort((ranks.index.to_numpy(), ranks.to_numpy()))]  # by rank, then name
    posthoc = None
    if p_value < alpha:
        posthoc = sp.posthoc_nemenyi_friedman(table.to_numpy())
        posthoc.index = posthoc.columns = table.columns
    return RankTest(metric, table, ranks, statistic, float(f), p_value, distribution, posthoc, nemenyi_cd(k, n, alpha), alpha,
                    sorted(set(full.columns) - set(table.columns)))


def cd_diagram(test: RankTest, path: Path, title: str, alpha: float = ALPHA) -> Path:
    """Draw the critical-difference diagram (:func:`.plots.critical_difference_diagram`: Demšar's layout; bars join
    configurations Nemenyi cannot separate)."""
    return critical_difference_diagram(test.ranks, test.posthoc, test.cd, path, title, alpha, LABEL)
