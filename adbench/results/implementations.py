"""Two implementations of one method on the same images: anomalib's model (``method=anomalib``) against
adbench's own (e.g. anomalib Patchcore vs adbench patchcore), paired per test image.

For every current anomalib run whose model adbench also implements (:data:`COUNTERPARTS`), and every
current run of adbench's method in the same leaderboard cell (dataset, backbone, image size, setting,
category) with the same seed and no test-time degradation: the difference anomalib − adbench of image
AUROC with its paired stratified bootstrap 95% interval and DeLong's paired p-value, and of pixel AUROC
with its interval (:func:`adbench.metrics.compare.paired`). Runs on other test images are listed as not
compared, with the reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError
from ..metrics.compare import paired
from ..metrics.registry import LABELS
from .formatting import pct
from .table import SECTION

# adbench's method for an anomalib model (lower-case class name)
COUNTERPARTS = {"patchcore": "patchcore", "padim": "padim", "cfa": "cfa"}
CELL = [*SECTION, "category", "seed"]
IMAGE, PIXEL = LABELS["image_auroc"], LABELS["pixel_auroc"]


def _interval(result: dict[str, Any]) -> str:
    if result["difference"] is None:
        return f"n/a ({result.get('reason', 'undefined')})"
    ci = result["ci95"]
    if ci and ci[0] == ci[1]:  # no interval to give: both scorings agree in every resample (e.g. both AUROC 1)
        return f"{100 * result['difference']:+.2f} (the same in every resample)"
    return f"{100 * result['difference']:+.2f}" + (f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else "")


def comparison_rows(runs: pd.DataFrame, records: list[dict[str, Any]], read) -> list[dict[str, str]]:
    """One row per (anomalib run, adbench run of the counterpart method in its cell): ``runs`` are the current
    runs (row index = position in ``records``), ``read`` a :data:`.stats.TableReader` (None: no table read)."""
    clean = runs[runs.degrade.isna()]
    rows = []
    for i, theirs in clean[clean.method == "anomalib"].iterrows():
        record = records[i]
        model = str(record.get("config", {}).get("method", {}).get("model"))
        ours_method = COUNTERPARTS.get(model.lower())
        if ours_method is None:
            continue
        cell = (clean[CELL] == theirs[CELL]).all(axis=1)
        version = (record.get("fit_info") or {}).get("anomalib_version", "?")
        for _, ours in clean[cell & (clean.method == ours_method)].iterrows():
            row = {"category": str(theirs.category), "anomalib": f"{theirs['name']} · anomalib {version}",
                   "adbench": str(ours["name"]), "seed": str(theirs.seed),
                   f"{IMAGE} anomalib": pct(theirs.image_auroc, 2), f"{IMAGE} adbench": pct(ours.image_auroc, 2)}
            tables = [read(r.per_image) if read is not None and isinstance(r.per_image, str) else None for r in (theirs, ours)]
            if any(t is None for t in tables):
                rows.append(row | {"test images": "–", f"Δ{IMAGE} [95% CI]": "not compared (no per-image table)",
                                   "DeLong p": "–", f"Δ{PIXEL} [95% CI]": "–"})
                continue
            try:
                image = paired(tables[0], tables[1], "image_auroc", seed=int(theirs.seed or 0))
                pixel = paired(tables[0], tables[1], "pixel_auroc", seed=int(theirs.seed or 0))
            except DataError as exc:
                rows.append(row | {"test images": "–", f"Δ{IMAGE} [95% CI]": f"not compared ({exc})", "DeLong p": "–", f"Δ{PIXEL} [95% CI]": "–"})
                continue
            p = image["p_value"]
            rows.append(row | {"test images": str(image["n_images"]), f"Δ{IMAGE} [95% CI]": _interval(image),
                               "DeLong p": "n/a" if p is None or np.isnan(p) else f"{p:.3g}", f"Δ{PIXEL} [95% CI]": _interval(pixel)})
    return rows


def implementations_section(report) -> list[str]:
    """Markdown lines of the comparison (none without an anomalib run that adbench's methods can be paired with)."""
    rows = sorted(comparison_rows(report.current, report.records, report.read), key=lambda r: (r["category"], r["anomalib"], r["adbench"]))
    if not rows:
        return []
    table = pd.DataFrame(rows).to_markdown(index=False, tablefmt="pipe", disable_numparse=True)
    return ["## anomalib vs adbench: the same method, two implementations, on the same test images", "",
            "Δ = anomalib − adbench in percentage points, with its paired stratified bootstrap 95% interval over the test images "
            "(both runs resampled together); image AUROC also with DeLong's paired test (two-sided p). The anomalib runs use "
            "adbench's images, transforms and backbone weights (their deviations are listed in their section); differences "
            "come from the implementations and their settings (row names).", "", table, ""]
