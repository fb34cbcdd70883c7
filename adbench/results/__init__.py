"""Results: one JSON record per run (+ per-image table), loading them as a pandas DataFrame
(``adbench.results.load(results_dir)``), and the generated leaderboard with its statistics, plots and the papers' numbers."""

from .table import leaderboard, load

__all__ = ["leaderboard", "load"]
