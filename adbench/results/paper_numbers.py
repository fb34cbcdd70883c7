"""What the papers report, next to what adbench measures.

- ``paper_numbers.csv`` (beside this module): the papers' numbers (CFA Tables 2-6, ReConPatch, FCDD), one row
  per (method, setting, dataset, class or group, metric), each with the paper that printed it
  (short reference, e.g. "CFA, Lee et al. 2022"; full references in the file's header) and its table;
- ``MEMORY_BANK``: each method's memory-bank size formula (CFA, Lee et al. 2022, Table 1), evaluated with a
  run's own |X|, H, W and D and set beside the bytes the run measured.

``compare(records)`` pairs measured runs with paper numbers: same method, every ``match`` condition
met by the run's config, same dataset, and for a group mean (textures / objects / all) every class
of the group measured; the paper's backbone is named in every row so a difference of backbone is
never hidden.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..data.sources import MVTEC_CATEGORIES, MVTEC_OBJECTS, MVTEC_TEXTURES
from ..errors import DataError
from ..metrics.registry import METRICS

PAPER_NUMBERS = Path(__file__).parent / "paper_numbers.csv"
THROUGHPUT = "images_per_s"  # not a metric: the records' model images per second (a cost column)
COMPARED = (*METRICS, THROUGHPUT)  # what a paper number may be of
NEVER = "-"
NOT_COMPARABLE = "not comparable:"  # a note starting so: the cell is shown, flagged, with no Δ (e.g. another PRO normalisation)

# classes averaged by a paper's group mean, per dataset label
GROUPS: dict[str, dict[str, list[str]]] = {
    "mvtec": {"textures": MVTEC_TEXTURES, "objects": MVTEC_OBJECTS, "all": MVTEC_CATEGORIES},
    "btad": {"all": ["01", "02", "03"]},
}
# the papers' backbone names → timm names
PAPER_BACKBONES = {"WRN50-2": "wide_resnet50_2", "WRN50": "wide_resnet50_2", "WRN101": "wide_resnet101_2", "ResNet18": "resnet18"}


@dataclass(frozen=True)
class PaperNumber:
    method: str
    match: tuple[tuple[str, Any], ...] | None  # None: reference only, never compared
    dataset: str
    category: str
    metric: str
    value: float
    backbone: str
    image_size: int | None
    setting: str
    table: str
    reported_in: str  # the paper that printed the number, e.g. "CFA, Lee et al. 2022"
    note: str

    @property
    def source(self) -> str:
        """The short citation, e.g. "CFA, Lee et al. 2022, Table 2"."""
        return f"{self.reported_in}, {self.table}"

    @property
    def timm_backbone(self) -> str | None:
        return PAPER_BACKBONES.get(self.backbone)


def _parse_match(text: str, where: str) -> tuple[tuple[str, Any], ...] | None:
    if text.strip() == NEVER:
        return None
    conditions = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise DataError(f"{where}: match condition {part!r} is not key=value")
        conditions.append((key.strip(), yaml.safe_load(value)))
    return tuple(conditions)


def load_paper_numbers(path: str | Path = PAPER_NUMBERS) -> list[PaperNumber]:
    """Read the paper-numbers CSV (``#`` lines are comments); bad rows raise a DataError naming the line."""
    path = Path(path)
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    numbers = []
    for row_no, row in enumerate(csv.DictReader(lines), start=2):
        where = f"{path} (data row {row_no - 1})"
        if row.get("metric") not in COMPARED:
            raise DataError(f"{where}: metric {row.get('metric')!r} is not one of {', '.join(COMPARED)}")
        if not row.get("method") or not row.get("dataset") or not row.get("category"):
            raise DataError(f"{where}: method, dataset and category are required")
        try:
            value = float(row["value"])
            size = int(row["image_size"]) if row["image_size"] else None
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: {exc}") from exc
        numbers.append(PaperNumber(
            row["method"], _parse_match(row["match"] or "", where), row["dataset"], row["category"], row["metric"], value,
            row["backbone"], size, row["setting"], row["table"], row["reported_in"], row["note"],
        ))
    return numbers


_MISSING = object()


def config_value(config: dict[str, Any], dotted: str) -> Any:
    """The value at ``a.b.c`` in a nested config, or a sentinel that equals nothing."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def matches(number: PaperNumber, record: dict[str, Any]) -> bool:
    """Same method and dataset, a clean test set, and the run's config meets every condition."""
    if number.match is None or number.method != record["method"] or number.dataset != record["dataset"] or record.get("degrade"):
        return False
    return all(config_value(record.get("config", {}), key) == value for key, value in number.match)


def measured_value(records: list[dict[str, Any]], metric: str) -> float | None:
    """Mean of ``metric`` over the records (%, or images/s); None when any is missing."""
    if metric == THROUGHPUT:
        if any((r.get("feature_cache") or {}).get("test", {}).get("hits") for r in records):
            return None  # scored cached features: no throughput of the whole model
        values = [r["throughput"]["model_images_per_s"] for r in records]
        return sum(values) / len(values)
    values = [r["metrics"].get(metric) for r in records]
    if any(v is None for v in values):
        return None
    return 100 * sum(values) / len(values)


def compare(records: list[dict[str, Any]], numbers: list[PaperNumber] | None = None,
            row_name: Callable[[dict[str, Any]], str] = lambda r: r["method"]) -> list[dict[str, Any]]:
    """Measured vs paper for one leaderboard section (one dataset, backbone, image size).

    One entry per (measured row, paper number) where the row's runs match the number and cover its
    class, or every class of its group; measured = the mean over classes of each class's mean over seeds.
    """
    numbers = load_paper_numbers() if numbers is None else numbers
    by_row: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for record in records:  # the seeds of a row and class
        by_row.setdefault(row_name(record), {}).setdefault(record["category"], []).append(record)
    out = []
    for row, cells in sorted(by_row.items()):
        for number in numbers:
            classes = GROUPS.get(number.dataset, {}).get(number.category, [number.category])
            chosen = [cells.get(c) for c in classes]
            if not all(chosen) or not all(matches(number, r) for runs in chosen for r in runs):
                continue
            per_class = [measured_value(runs, number.metric) for runs in chosen]  # mean over seeds, then over classes
            if any(v is None for v in per_class):
                continue
            measured = sum(per_class) / len(per_class)
            comparable = not number.note.startswith(NOT_COMPARABLE)
            out.append({"row": row, "number": number, "measured": measured, "difference": measured - number.value if comparable else None,
                        "same_backbone": number.timm_backbone == chosen[0][0]["backbone"]})
    return out


# --- memory-bank size: the papers' formulas (CFA, Lee et al. 2022, Table 1) evaluated for a run ---

FLOAT_BYTES = 4


def _maps(record: dict[str, Any]) -> list[tuple[int, int, int]] | None:
    """(C, h, w) of the run's layers, finest first."""
    maps = record.get("feature_maps")
    return [(c, h, w) for _, c, h, w in maps] if maps else None


def _cfg(record: dict[str, Any], key: str) -> Any:
    return record.get("config", {}).get("method", {}).get(key)


def _spade(r: dict[str, Any]) -> float | None:
    maps = _maps(r)
    return None if not maps else FLOAT_BYTES * r["n_train"] * maps[0][1] * maps[0][2] * sum(c for c, _, _ in maps[:-1])


def _padim(r: dict[str, Any]) -> float | None:
    maps, d = _maps(r), _cfg(r, "dim")
    return None if not maps or d is None else FLOAT_BYTES * maps[0][1] * maps[0][2] * (d * d + d)


def _patchcore(r: dict[str, Any], dim_key: str = "embed_dim") -> float | None:
    maps, ratio, dim = _maps(r), _cfg(r, "coreset_ratio"), _cfg(r, dim_key)
    if not maps or ratio is None:
        return None
    dims = sum(c for c, _, _ in maps) if dim is None else dim  # every layer pooled (or stretched) to dim
    return FLOAT_BYTES * math.ceil(ratio * r["n_train"] * maps[0][1] * maps[0][2]) * dims


def _cfa(r: dict[str, Any]) -> float | None:
    maps, gd, gc = _maps(r), _cfg(r, "gamma_d"), _cfg(r, "gamma_c")
    if not maps or gd is None or gc is None:
        return None
    views, width = len(_cfg(r, "views") or ["resize"]), _cfg(r, "width_factor") or 1  # official EfficientNet width: 2 D
    return FLOAT_BYTES * views * gc * maps[0][1] * maps[0][2] * gd * width * sum(c for c, _, _ in maps)


def _gaussian(r: dict[str, Any]) -> float | None:
    maps = _maps(r)
    return None if not maps else FLOAT_BYTES * sum(c * c + c for c, _, _ in maps)


@dataclass(frozen=True)
class BankFormula:
    formula: str  # as the papers write it
    grows_with_train_set: bool
    bytes: Callable[[dict[str, Any]], float | None]  # evaluated for a run (float32), None when unknown
    note: str = ""


MEMORY_BANK: dict[str, BankFormula] = {
    "spade": BankFormula("G ∈ R^{|X|×H×W×D}", True, _spade),
    "padim": BankFormula("N(μ, Σ) ∈ R^{H×W×D²}", False, _padim),
    "patchcore": BankFormula("M ∈ R^{γ|X|×H×W×D'}", True, _patchcore),
    "reconpatch": BankFormula("M ∈ R^{γ|X|×H×W×D'}", True, lambda r: _patchcore(r, "feature_dim")),
    "cfa": BankFormula("C ∈ R^{γ(H×W×D)}, γ = γ_c γ_d", False, _cfa),
    "cfa_plus": BankFormula("C ∈ R^{γ(H×W×D)}, γ = γ_c γ_d", False, _cfa, "× 2 views (resize, crop)"),
    "gaussian_ad": BankFormula("N(μ_s, Σ_s) ∈ R^{D_s + D_s²} per stage", False, _gaussian,
                               "not in CFA Table 1: MahalanobisAD is image level, one Gaussian per stage, not PaDiM's H×W×D²"),
    "fcdd": BankFormula("none: a trained network", False, lambda r: None),
}


# --- markdown for the leaderboard ------------------------------------------------------------------

def _size(number: PaperNumber) -> str:
    return f"{number.image_size} px" if number.image_size else "size not stated"


def comparison_lines(records: list[dict[str, Any]], row_name: Callable[[dict[str, Any]], str]) -> list[str]:
    """The section's table of measured vs paper numbers, or a line saying why none is comparable."""
    numbers = load_paper_numbers()
    first = records[0]
    relevant = [n for n in numbers if n.dataset == first["dataset"] and n.match is not None and n.method in {r["method"] for r in records}]
    if not relevant:
        return []
    pairs = compare(records, relevant, row_name)
    lines = ["**Paper numbers beside measured ones** (`adbench/results/paper_numbers.csv`). Δ = measured − paper, in points. "
             f"Measured here: `{first['backbone']}` at {first['image_size']} px; the papers mostly used WRN50-2 at their own "
             "image size, so Δ mixes the method with the backbone and setting wherever the row says ≠ backbone: "
             "read those as context, not as a reproduction check.", ""]
    if not pairs:
        measured = sorted({r["category"] for r in records})
        lines += [f"No paper number is comparable: the papers report {', '.join(sorted({n.category for n in relevant}))} "
                  f"(group means need every class of the group), this section measured {', '.join(measured)}.", ""]
        return lines
    lines += ["| method | class / group | metric | measured | paper | Δ | paper backbone | setting | source |", "|---|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        n = p["number"]
        backbone = f"{n.backbone or 'not stated'}, {_size(n)}" + ("" if p["same_backbone"] else " (≠ backbone)")
        setting = "; ".join(filter(None, [n.setting, n.note]))
        delta = "not comparable" if p["difference"] is None else f"{p['difference']:+.1f}"
        lines.append(f"| {p['row']} | {n.category} | {n.metric} | {p['measured']:.1f} | {n.value:g} | {delta} | "
                     f"{backbone} | {setting or '–'} | {n.source} |")
    return lines + [""]


def memory_bank_lines(records: list[dict[str, Any]], row_name: Callable[[dict[str, Any]], str]) -> list[str]:
    """Per method row: the paper's memory-bank formula evaluated for the run, beside the measured bytes."""
    rows: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: r["category"]):
        rows.setdefault(row_name(record), record)
    lines = ["**Memory bank: paper formula vs measured** (formulas: CFA, Lee et al. 2022, Table 1; float32; |X| training images, "
             "H×W positions of the finest layer, D channels). Measured = every fitted tensor scoring needs, as the method reports it.", "",
             "| method | class | formula | grows with \\|X\\| | \\|X\\| | formula MiB | measured MiB | measured / formula | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row, r in rows.items():
        formula = MEMORY_BANK.get(r["method"])
        if formula is None:
            continue
        expected = formula.bytes(r)
        measured = r["memory_bank"]["bytes"]
        ratio = f"{measured / expected:.2f}" if expected else "n/a"
        lines.append(f"| {row} | {r['category']} | {formula.formula.replace('|', chr(92) + '|')} | {'yes' if formula.grows_with_train_set else 'no'} | {r['n_train']} | "
                     f"{'n/a' if expected is None else f'{expected / 2**20:.2f}'} | {measured / 2**20:.2f} | {ratio} | {formula.note or '–'} |")
    return lines + [""] if len(lines) > 4 else []
