"""Is a difference real? Ties with the best method per category, and ranks across categories and datasets.

- :func:`mark_ties`: per leaderboard cell (section, category) and metric, the best configuration (highest
  mean) and every configuration not significantly worse at α = 0.05. Two sources of noise are tested
  wherever the records allow: the test images (a paired test on the per-image tables of a common seed,
  :mod:`adbench.metrics`), and the seeds (Welch's t-test on the per-seed values, both sides with >= 2
  seeds). A difference is called real only when every available test rejects; with no test available
  the cell is left unmarked.
- :func:`rank_test`: average ranks over blocks (dataset, category, image size) of the configurations run
  on every block, the Friedman test and the Nemenyi post-hoc test (Demšar 2006, JMLR 7), with the
  critical-difference diagram drawn by scikit-posthocs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scikit_posthocs as sp
from scipy import stats

from ..errors import DataError
from ..metrics.compare import paired
from ..metrics.per_image import read_per_image
from .table import REPLICATE, SECTION, STANDARD

ALPHA = 0.05
TIE_METRICS = ["image_auroc", "pixel_auroc", "aupro"]
LABEL = 48  # characters of a configuration name in the CD diagram

# p-value of the paired comparison of two runs on the same test images: (per-image table a, table b, metric) -> p or None
PairedTest = Callable[[str, str, str], float | None]


def paired_test(results_dir: Path) -> PairedTest:
    """The paired per-image test (:func:`adbench.metrics.compare.paired`: DeLong for image AUROC, paired
    bootstrap otherwise) on tables under ``results_dir``; None when the metric is undefined there, a
    table lacks its columns, or the two runs scored different test images (e.g. labelled anomalies moved)."""
    read = lru_cache(maxsize=64)(lambda name: read_per_image(Path(results_dir) / name))  # the best's table is read once per cell

    def test(a: str, b: str, metric: str) -> float | None:
        try:
            p = paired(read(a), read(b), metric)["p_value"]
        except DataError:
            return None
        return None if p is None or np.isnan(p) else float(p)

    return test


def welch_p(a: np.ndarray, b: np.ndarray) -> float | None:
    """Two-sided p of Welch's t-test between two seed samples; None with < 2 seeds a side or no spread at all.

    A side whose seeds agree exactly (a deterministic method) has zero variance: Welch's test then is the
    one-sample t-test of the other side against that value (same t, df = n - 1), run as such so that
    scipy does not demean identical floats."""
    if len(a) < 2 or len(b) < 2:
        return None
    constant_a, constant_b = np.ptp(a) == 0, np.ptp(b) == 0
    if constant_a and constant_b:
        return None
    if constant_a or constant_b:
        varying, value = (b, a[0]) if constant_a else (a, b[0])
        return float(stats.ttest_1samp(varying, value).pvalue)
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _p_vs_best(best: pd.DataFrame, other: pd.DataFrame, metric: str, paired_p: PairedTest | None) -> float | None:
    """The largest p-value among the tests available for ``other`` against ``best`` (runs of one configuration each)."""
    found = [welch_p(best[metric].to_numpy(), other[metric].to_numpy())]
    if paired_p is not None:
        tables_a = dict(zip(best.seed, best.per_image))
        tables_b = dict(zip(other.seed, other.per_image))
        common = sorted(s for s in tables_a if isinstance(tables_a[s], str) and isinstance(tables_b.get(s), str))  # NaN: no table
        if common:
            found.append(paired_p(tables_a[common[0]], tables_b[common[0]], metric))
    found = [p for p in found if p is not None]
    return max(found) if found else None


def mark_ties(board: pd.DataFrame, runs: pd.DataFrame, paired_p: PairedTest | None = None, alpha: float = ALPHA) -> pd.DataFrame:
    """``board`` (from :func:`adbench.results.table.leaderboard`) with ``<metric>_best``, ``<metric>_tie`` and
    ``<metric>_p_vs_best`` per metric of :data:`TIE_METRICS`. Degraded runs neither win nor tie (another test set).

    ``runs`` are the current runs (for seeds and per-image tables); ``paired_p`` runs the per-image test
    (:func:`paired_test`; None: seeds only)."""
    board = board.copy()
    for metric in TIE_METRICS:
        board[f"{metric}_best"], board[f"{metric}_tie"], board[f"{metric}_p_vs_best"] = False, False, np.nan
    if board.empty:
        return board
    eligible = board[board.degrade.isna()]
    by_key = dict(tuple(runs.groupby(REPLICATE)))
    for _, cell in eligible.groupby([*SECTION, "category"], dropna=False):
        for metric in TIE_METRICS:
            scored = cell[cell[metric].notna()]
            if scored.empty:
                continue
            top = scored[metric].max()
            winners = scored.index[scored[metric] == top]
            board.loc[winners, f"{metric}_best"] = True
            best_runs = by_key[tuple(scored.loc[winners[0], REPLICATE])]
            for index in scored.index.difference(winners):
                p = _p_vs_best(best_runs, by_key[tuple(scored.loc[index, REPLICATE])], metric, paired_p)
                if p is not None:
                    board.loc[index, f"{metric}_p_vs_best"] = p
                    board.loc[index, f"{metric}_tie"] = p >= alpha
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
    """Friedman + Nemenyi over a complete block x treatment table of one metric."""

    metric: str
    table: pd.DataFrame  # blocks x treatments, the metric's seed-mean values
    ranks: pd.Series  # average rank per treatment, 1 = best, ascending
    statistic: float
    p_value: float
    posthoc: pd.DataFrame  # Nemenyi p-values, treatments x treatments
    cd: float
    left_out: list[str] = field(default_factory=list)  # treatments without a value on every block


def rank_table(board: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Blocks (dataset/category @ size) x treatments (configuration, with backbone when several) of clean
    standard-setting rows; NaN where a configuration was not run on a block."""
    clean = board[board.degrade.isna() & (board.setting == STANDARD) & board[metric].notna()]
    several = clean.backbone.nunique() > 1
    treatment = clean.name + (" · " + clean.backbone if several else "")
    block = clean.dataset + "/" + clean.category.astype(str) + " @" + clean.image_size.astype(str)
    return clean.assign(treatment=treatment, block=block).pivot_table(index="block", columns="treatment", values=metric, aggfunc="mean")


def rank_test(board: pd.DataFrame, metric: str, alpha: float = ALPHA) -> RankTest | str:
    """The test over the configurations run on every block kept, or a sentence saying why there is none."""
    full = rank_table(board, metric)
    table = complete_blocks(full)
    k, n = table.shape[1], table.shape[0]
    if k < 3 or n < 2:
        return f"needs at least 3 configurations run on the same 2 or more blocks; found {k} on {n}"
    if (table.nunique(axis=1) == 1).all():
        return f"all {k} configurations score the same on every block"
    statistic, p_value = stats.friedmanchisquare(*(table[c].to_numpy() for c in table.columns))
    ranks = table.rank(axis=1, ascending=False).mean()
    ranks = ranks.iloc[np.lexsort((ranks.index.to_numpy(), ranks.to_numpy()))]  # by rank, then name
    posthoc = sp.posthoc_nemenyi_friedman(table.to_numpy())
    posthoc.index = posthoc.columns = table.columns
    return RankTest(metric, table, ranks, float(statistic), float(p_value), posthoc, nemenyi_cd(k, n, alpha),
                    sorted(set(full.columns) - set(table.columns)))


def cd_diagram(test: RankTest, path: Path, title: str, alpha: float = ALPHA) -> Path:
    """Draw the critical-difference diagram (average ranks; bars join configurations Nemenyi cannot separate)."""
    short = {name: name if len(name) <= LABEL else name[:LABEL - 1] + "…" for name in test.ranks.index}
    fig = plt.figure(figsize=(11, 1.0 + 0.28 * len(test.ranks)), dpi=110)
    ax = fig.add_axes((0.34, 0.04, 0.32, 0.8))  # the labels go left and right of the rank axis
    sp.critical_difference_diagram(test.ranks.rename(short), test.posthoc.rename(index=short, columns=short), ax=ax,
                                   alpha=alpha, cd=test.cd, label_props={"fontsize": 8})
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
