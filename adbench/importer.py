"""``adbench-import scores=FILE.csv name=TOOL dataset=NAME [dataset.category=NAME]`` / ``python -m adbench.importer``:
per-image scores of any tool → a run record with adbench's metric suite, CIs and per-image table (conf/import.yaml).

The CSV has a row per test image of the dataset: ``path`` (relative to the dataset's base folder, as in adbench's
per-image tables, or absolute) and ``score``; an optional ``map`` column names each image's anomaly map, an
``.npy`` array or a ``.png`` image (relative to the CSV's folder), either at the image's own size (then resized
and centre-cropped like the masks, bilinearly) or already at the evaluated size (``dataset.crop``). Every problem
(an unknown path, a test image without a row, a map missing, unreadable or of the wrong size) is reported on a
line of its own, and nothing is written. The record is marked ``imported`` (its row tagged so in the leaderboard)
and has no cost figures: adbench did not run the model.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torchvision.transforms import functional as TF

from .cli import hydra_command
from .config.run_data import read_run_data
from .data.dataset import ImageDataset
from .data.samples import Sample
from .data.splits import data_base, split_digest
from .data.transforms import Transform
from .errors import DataError
from .files import file_sha256
from .metrics import assess_scored
from .metrics.parts import split_by_part
from .metrics.per_image import table_path, write_per_image
from .results.records import config_hash, find_record, git_commit, library_versions, portable_path, record_config, write_run
from .scores import Scored

MAP_SUFFIXES = (".npy", ".png")


class ImportProblems(DataError):
    """Every problem of an import, one line each (``lines``)."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def read_rows(path: Path) -> list[dict[str, str]]:
    """The CSV's rows; DataError naming the file when it is missing or lacks ``path`` / ``score``."""
    if not path.is_file():
        raise DataError(f"scores={path}: no such file")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        missing = [c for c in ("path", "score") if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path}: no column {', '.join(missing)} (columns: path,score[,map])")
    return rows


def read_map(path: Path) -> np.ndarray:
    """A 2-D anomaly map from ``.npy`` or ``.png`` (its grey levels as scores)."""
    array = np.load(path, allow_pickle=False) if path.suffix.lower() == ".npy" else np.asarray(Image.open(path))
    array = np.squeeze(array)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"not a 2-D numeric map (shape {array.shape}, {array.dtype})")
    return array.astype(np.float32)


def evaluated_map(array: np.ndarray, image_size: tuple[int, int], transform: Transform) -> np.ndarray | None:
    """The map at the evaluated size: as given at ``crop`` x ``crop``, or resized and centre-cropped from the image's
    (H, W) as the masks are (bilinear); None when it has neither size."""
    crop = (transform.crop, transform.crop)
    if array.shape == crop and image_size != crop:
        return array
    if array.shape != image_size:
        return None
    tensor = TF.resize(torch.from_numpy(array)[None], [transform.resize, transform.resize], antialias=True)
    return TF.center_crop(tensor, list(crop))[0].numpy()


def match_rows(rows: list[dict[str, str]], samples: list[Sample], base: Path, source: Path) -> tuple[list[int], list[str]]:
    """For each test sample the index of its CSV row, and a line per problem (unknown, repeated or unscorable rows,
    test images without a row)."""
    index = {s.image.relative_to(base).as_posix(): i for i, s in enumerate(samples)}
    index |= {str(s.image): i for i, s in enumerate(samples)}
    row_of: dict[int, int] = {}
    problems = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{source} line {line}"
        found = index.get(row["path"]) if row["path"] in index else index.get(str(Path(row["path"]).resolve()))
        if found is None:
            problems.append(f"{where}: path {row['path']!r} is not a test image of the dataset (paths are relative to {portable_path(base)})")
        elif found in row_of:
            problems.append(f"{where}: path {row['path']!r} repeats line {row_of[found] + 2}")
        else:
            row_of[found] = line - 2
        try:
            if not np.isfinite(float(row["score"])):
                raise ValueError
        except (TypeError, ValueError):
            problems.append(f"{where}: score {row['score']!r} is not a finite number")
    problems += [f"{source}: no row for test image {s.image.relative_to(base).as_posix()}" for i, s in enumerate(samples) if i not in row_of]
    return [row_of.get(i, -1) for i in range(len(samples))], problems


def import_scores(cfg: DictConfig) -> Path:
    """Check the CSV (and maps) against the dataset's test set, then write the record and its per-image table."""
    source = Path(cfg.scores)
    rows = read_rows(source)
    data = read_run_data(cfg)
    split = data.split
    samples, base = split.test, data_base(split)
    order, problems = match_rows(rows, samples, base, source)
    transform = Transform(int(cfg.dataset.resize), int(cfg.dataset.crop))
    dataset = ImageDataset(samples, transform)
    masks = np.stack([dataset[i]["mask"].numpy().astype(bool) for i in range(len(samples))]) if split.has_masks else None
    with_maps = any(row.get("map") for row in rows)
    maps = []
    for i, (sample, r) in enumerate(zip(samples, order)):
        if r < 0 or not with_maps:
            continue
        where = f"{source} line {r + 2}"
        name = rows[r].get("map") or ""
        path = source.parent / name
        if not name or path.suffix.lower() not in MAP_SUFFIXES or not path.is_file():
            problems.append(f"{where}: map {name!r} " + ("is not a file" if name else "missing (other rows have one)") + f" (.npy or .png beside {source.name})")
            continue
        width, height = Image.open(sample.image).size
        try:
            raw = read_map(path)
            amap = evaluated_map(raw, (height, width), transform)
        except (OSError, ValueError) as exc:
            problems.append(f"{where}: map {name}: cannot be read ({exc})")
            continue
        if amap is None:
            problems.append(f"{where}: map {name} is {raw.shape[1]}x{raw.shape[0]}; expected the image's "
                            f"{width}x{height} or the evaluated {transform.crop}x{transform.crop}")
        else:
            maps.append(amap)
    if problems:
        raise ImportProblems(problems)

    config = OmegaConf.to_container(cfg, resolve=True)
    config["scores"], config["scores_sha256"] = portable_path(source.absolute()), file_sha256(source)
    config = record_config(config, split_digest(data.source))
    digest = config_hash(config)
    results_dir = Path(cfg.results_dir)
    existing = find_record(results_dir, digest)
    if existing is not None and not cfg.force:
        print(f"record exists for this import; not rewritten (force=true rewrites it): {existing}")
        return existing
    scored = Scored([str(s.image) for s in samples], np.array([s.label for s in samples]),
                    np.array([float(rows[r]["score"]) for r in order]), masks, np.stack(maps) if maps else None)
    pixel = split.has_masks and with_maps
    record = imported_record(cfg, config, digest, source, len(split.train), with_maps)
    (part,) = split_by_part(data.parts, scored, pixel)
    found = assess_scored(part.scored, samples, base, split.has_masks, with_maps, int(cfg.seed))
    record.update(part.fields, **found.fields)
    return write_run(results_dir, record, lambda tmp: write_per_image(tmp, found.table), table_path)


def imported_record(cfg: DictConfig, config: dict[str, Any], digest: str, source: Path, n_train: int, with_maps: bool) -> dict[str, Any]:
    """The record's fields that do not come from the scores: what was imported, from where, and no cost figures."""
    return {
        "method": str(cfg.name), "variant": "imported", "imported": {"scores": portable_path(source.absolute()), "maps": with_maps},
        "setting": {"name": "full", "label": None}, "deviations": [], "degrade": None,
        "backbone": str(cfg.backbone), "weights": None, "layers": [], "image_size": int(cfg.dataset.crop), "resize": int(cfg.dataset.resize),
        "seed": int(cfg.seed), "n_train": n_train, "train_anomalies": [], "fit_seconds": None, "fit_info": {}, "throughput": {},
        "memory_bank": {"shape": [], "vectors": None, "dims": None, "bytes": None}, "cost": None, "feature_cache": None,
        "peak_rss_bytes": None, "peak_gpu_bytes": None, "device": "imported", "device_name": "imported", "versions": library_versions(),
        "git_commit": git_commit(), "config_hash": digest, "config": config, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@hydra_command("import", "adbench-import")
def main(cfg: DictConfig) -> None:
    try:
        path = import_scores(cfg)
    except ImportProblems as exc:  # one line per problem (the command's other errors are one line already)
        print("\n".join(f"adbench-import: error: {line}" for line in exc.lines), file=sys.stderr)
        sys.exit(2)
    print(f"imported {cfg.scores} as {cfg.name}: {path}")


if __name__ == "__main__":
    main()
