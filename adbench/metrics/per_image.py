"""Per-image result tables: one row per test image, from which every metric of a record is recomputed
without the model (:func:`.weighted.table_metrics`), and which the bootstrap and paired comparisons resample.

Columns: ``path`` (relative to the dataset's base folder), ``label`` (0 normal, 1 anomalous),
``defect`` ("good" for normal images), ``score`` (the image score, float64); in pixel-level runs also
- ``normal_hist``: the image's normal pixels counted in each bin of the run's score grid (K counts);
- ``region_hists``: one K-count histogram per defect region of the image (8-connected, the regions
  AUPRO averages over), empty for a normal image.
``table.attrs`` hold ``format``, ``pro_limit`` and ``bin_edges`` (K + 1 ascending edges; in the file,
base64 float64 bytes, decoded by :func:`read_per_image`). Files are Parquet (pyarrow, zstd), about
1.1 KB per pixel-level image with K = 1024 (bottle, 83 test images: ~100 KB).

Exactness. Image metrics recompute exactly (the scores are stored). Pixel metrics are binned, on a
grid of about ``BINS`` bins: half the edges at quantiles of the normal pixels' scores, half at quantiles
of the defect pixels' (so the FPR range AUPRO integrates and the high-precision range AP and F1-max
depend on both get fine bins). Each bin is one threshold, its pixels tied, as scikit-learn treats tied
scores: pixel pairs within one bin count half for AUROC, AP and F1-max take the bin's step (so with
one bin per distinct score, e.g. maps rounded to 1/20, they are scikit-learn's exactly), AUPRO
interpolates linearly within a bin. Measured on the 58 committed tables (results/records, 1024 bins;
tests/test_per_image.py checks every one against :data:`TOLERANCES`): the largest gaps to the exact
metrics are AUROC 2.1e-6, AP 1.0e-3, F1-max 3.4e-4, AUPRO 5.0e-5; AP's step undershoots continuous
scores most where a bin holds many defect pixels at falling precision. Records keep the exact pixel
metrics (comparable with published numbers); intervals and paired comparisons use the binned ones,
whose offsets from exact are far inside the intervals.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from ..files import atomic_write
from .aupro import label_regions

BINS = 1024
# binned minus exact pixel metrics, the largest measured on the committed tables (see above), rounded up
TOLERANCES = {"pixel_auroc": 3e-6, "pixel_ap": 1.1e-3, "pixel_f1_max": 3.5e-4, "aupro": 6e-5}
FORMAT = "adbench per-image v1"
IMAGE_COLUMNS = ("path", "label", "defect", "score")
PIXEL_COLUMNS = ("normal_hist", "region_hists")
SCHEMA = {
    "path": pa.string(), "label": pa.int8(), "defect": pa.string(), "score": pa.float64(),
    "normal_hist": pa.list_(pa.uint32()), "region_hists": pa.list_(pa.list_(pa.uint32())),
}


def bin_edges(maps: np.ndarray, masks: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Ascending grid edges: ``bins // 2`` quantile steps of the normal pixels' scores, as many of the defect pixels'."""
    levels = np.linspace(0.0, 1.0, bins // 2 + 1)
    parts = [np.quantile(maps[sel], levels) for sel in (~masks, masks) if sel.any()]
    edges = np.unique(np.concatenate(parts)) if parts else np.zeros(1)
    return edges if edges.size > 1 else np.r_[edges, edges]


def digitize(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each value: bin k holds [edges[k], edges[k + 1]); the outer bins extend to -inf / +inf."""
    return np.searchsorted(edges[1:-1], values, side="right")


def pixel_histograms(maps: np.ndarray, masks: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per image: normal-pixel counts per bin ``(n, K)``, and its defect regions' counts ``(regions, K)``."""
    n, k = len(maps), len(edges) - 1
    bins = digitize(maps, edges)
    image = np.broadcast_to(np.arange(n)[:, None, None], maps.shape)
    normal = np.bincount((image * k + bins)[~masks], minlength=n * k).reshape(n, k)
    regions, sizes = label_regions(masks)
    per_region = np.bincount(regions[masks] * k + bins[masks], minlength=len(sizes) * k).reshape(len(sizes), k)[1:]
    region_image = np.zeros(len(sizes) - 1, dtype=np.int64)
    region_image[regions[masks] - 1] = image[masks]
    split = np.cumsum(np.bincount(region_image, minlength=n))[:-1]
    return normal, np.split(per_region, split)


def per_image_table(
    paths: list[str],
    labels: np.ndarray,
    defects: list[str],
    scores: np.ndarray,
    maps: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    pro_limit: float = 0.3,
    bins: int = BINS,
) -> pd.DataFrame:
    """The table of one run's test images; pixel columns when both ``maps`` and ``masks`` are given."""
    table = pd.DataFrame({
        "path": list(paths),
        "label": np.asarray(labels, dtype=np.int8),
        "defect": list(defects),
        "score": np.asarray(scores, dtype=np.float64),
    })
    table.attrs = {"format": FORMAT, "pro_limit": pro_limit}
    if maps is not None and masks is not None:
        maps, masks = np.asarray(maps), np.asarray(masks).astype(bool)
        edges = bin_edges(maps, masks, bins)
        normal, regions = pixel_histograms(maps, masks, edges)
        table["normal_hist"] = list(normal.astype(np.uint32))
        table["region_hists"] = [list(r.astype(np.uint32)) for r in regions]
        table.attrs["bin_edges"] = edges.tolist()  # a list, not an array: pandas compares attrs when it combines frames
    return table


def has_pixels(table: pd.DataFrame) -> bool:
    return all(c in table.columns for c in PIXEL_COLUMNS)


def write_per_image(path: str | Path, table: pd.DataFrame) -> Path:
    """Write ``table`` atomically as zstd-compressed Parquet; its attrs go to the file's ``PANDAS_ATTRS``
    (what pandas restores as ``attrs``), the bin edges as base64 float64 bytes (a few KB, not ~20 KB of JSON)."""
    attrs = dict(table.attrs)
    if "bin_edges" in attrs:
        attrs["bin_edges"] = base64.b64encode(np.asarray(attrs["bin_edges"], dtype="<f8").tobytes()).decode()
    data = pa.Table.from_pandas(table, schema=pa.schema([(c, SCHEMA[c]) for c in table.columns]), preserve_index=False)

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, data.schema, compression="zstd", store_schema=False) as writer:  # no second copy of the metadata
            writer.write_table(data)
            writer.add_key_value_metadata({"PANDAS_ATTRS": json.dumps(attrs)})

    return atomic_write(path, write)


def read_per_image(path: str | Path) -> pd.DataFrame:
    """A per-image table written by :func:`write_per_image` (``attrs["bin_edges"]`` decoded); DataError naming the file otherwise."""
    try:
        table = pd.read_parquet(path, engine="pyarrow")
        if "bin_edges" in table.attrs:
            table.attrs["bin_edges"] = np.frombuffer(base64.b64decode(table.attrs["bin_edges"]), dtype="<f8").tolist()
    except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
        raise DataError(f"cannot read per-image table {path}: {exc}") from exc
    missing = [c for c in IMAGE_COLUMNS if c not in table.columns]
    if missing or table.attrs.get("format") != FORMAT:
        raise DataError(f"{path} is not an adbench per-image table (format {table.attrs.get('format')!r}, missing columns {missing})")
    if any(c in table.columns for c in PIXEL_COLUMNS) and ("bin_edges" not in table.attrs or not has_pixels(table)):
        raise DataError(f"{path}: pixel columns {', '.join(PIXEL_COLUMNS)} and attrs bin_edges must come together")
    return table


def table_path(record_path: str | Path) -> Path:
    """Where a record's per-image table lives: beside it, ``<record stem>.per_image.parquet``."""
    record_path = Path(record_path)
    return record_path.with_name(f"{record_path.stem}.per_image.parquet")
