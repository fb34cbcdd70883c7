"""Helpers shared by the benchmark scripts: bottle features and JSON output."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": sys.version.split()[0],
        "load_average": list(os.getloadavg()),
    }


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**payload, "machine": machine()}, indent=2) + "\n")
    return path


def bottle_patch_features(crop: int = 224, device: str = "cpu") -> torch.Tensor:
    """PatchCore patch features (Lite0 blocks.2 + blocks.4, p=3) of MVTec bottle's training images."""
    from adbench.data.dataset import ImageDataset
    from adbench.data.sources import load_mvtec
    from adbench.data.transforms import Transform
    from adbench.features.backbones import Backbone
    from adbench.features.patches import flatten_patches, patch_features

    if not os.environ.get("ADBENCH_DATA"):
        raise SystemExit("set ADBENCH_DATA to the folder holding mvtec/bottle (e.g. ../shared/data)")
    backbone = Backbone("tf_efficientnet_lite0", ["blocks.2", "blocks.4"]).to(device)
    split = load_mvtec(None, "bottle")
    data = torch.utils.data.DataLoader(ImageDataset(split.train, Transform(crop, crop, backbone.mean, backbone.std)), batch_size=16)
    maps = [patch_features(list(backbone(b["image"].to(device)).values()), 3) for b in data]
    return torch.cat([flatten_patches(m) for m in maps])
