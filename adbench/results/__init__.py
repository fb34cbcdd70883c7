"""Results: one JSON record per run (+ per-image table), loading them as a pandas DataFrame, and the generated leaderboard with its plots and the papers' numbers."""
