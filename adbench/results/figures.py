"""A PNG per run: a few test images as image | ground truth | anomaly-map overlay."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def pick_examples(labels: np.ndarray, count: int) -> list[int]:
    """Mostly anomalous examples, then one or more normal ones, spread over the test set."""
    anomalous, normal = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n_normal = min(len(normal), max(1, count // 4))
    n_anomalous = min(len(anomalous), count - n_normal)
    chosen = [anomalous[int(i)] for i in np.linspace(0, len(anomalous) - 1, n_anomalous)] if n_anomalous else []
    chosen += [normal[int(i)] for i in np.linspace(0, len(normal) - 1, n_normal)] if n_normal else []
    return [int(i) for i in chosen]


def save_examples(path: Path, images: np.ndarray, masks: np.ndarray | None, maps: np.ndarray | None, scores: np.ndarray, title: str) -> Path:
    """Save ``images`` (N, H, W, 3 in [0, 1]) with masks and maps as a grid PNG."""
    columns = 1 + (masks is not None) + (maps is not None)
    fig, axes = plt.subplots(len(images), columns, figsize=(3 * columns, 3 * len(images)), squeeze=False)
    vmax = float(np.percentile(maps, 99.5)) if maps is not None else None
    vmin = float(maps.min()) if maps is not None else None
    for row, image in enumerate(images):
        panels = [("image", image, {})]
        if masks is not None:
            panels.append(("ground truth", masks[row], {"cmap": "gray", "vmin": 0, "vmax": 1}))
        for col, (name, data, kwargs) in enumerate(panels):
            axes[row, col].imshow(data, **kwargs)
            axes[row, col].set_title(name if name != "image" else f"score {scores[row]:.3g}", fontsize=9)
        if maps is not None:
            axes[row, -1].imshow(image)
            axes[row, -1].imshow(maps[row], cmap="jet", alpha=0.45, vmin=vmin, vmax=vmax)
            axes[row, -1].set_title("anomaly map", fontsize=9)
        for ax in axes[row]:
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
