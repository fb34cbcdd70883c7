"""Per-defect-type breakdown for the leaderboard: for each category, each configuration's image AUROC of
one defect type against the good test images, and its AUPRO over that type's regions (record field
``per_defect``: {defect: {"n", "image_auroc", "aupro"}}), as the mean over seeds."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd

from .formatting import pct


def defect_frame(records: list[dict[str, Any]], names: list[str]) -> pd.DataFrame:
    """One row per (run, defect type): name, category, seed, defect, n, image_auroc, aupro."""
    rows = []
    for record, name in zip(records, names):
        for defect, values in sorted((record.get("per_defect") or {}).items()):
            rows.append({"name": name, "category": record["category"], "seed": record.get("seed"), "defect": defect,
                         "n": values.get("n"), "image_auroc": values.get("image_auroc"), "aupro": values.get("aupro")})
    return pd.DataFrame(rows, columns=["name", "category", "seed", "defect", "n", "image_auroc", "aupro"])


def defect_tables(records: list[dict[str, Any]], names: list[str]) -> dict[str, pd.DataFrame]:
    """Category → configurations x defect types, cells "I-AUROC / AUPRO" (%, seed means)."""
    frame = defect_frame(records, names)
    tables: dict[str, pd.DataFrame] = {}
    for category, rows in frame.groupby("category", sort=True):
        means = rows.astype({"image_auroc": float, "aupro": float}).groupby(["name", "defect"]).agg(
            image_auroc=("image_auroc", "mean"), aupro=("aupro", "mean"), n=("n", "first"))
        counts = means.n.groupby(level="defect").first()
        cells: dict[str, dict[str, str]] = defaultdict(dict)
        for (name, defect), row in means.iterrows():
            cells[name][f"{defect} (n={counts[defect]})"] = f"{pct(row.image_auroc)} / {pct(row.aupro)}"
        table = pd.DataFrame.from_dict(cells, orient="index").sort_index()
        table = table[sorted(table.columns)].fillna("–")
        tables[str(category)] = table.rename_axis("method").reset_index()
    return tables
