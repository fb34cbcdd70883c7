"""Score ensembles (ReConPatch, Hyun et al. 2024, Sec. 3.4): modified z-scores per member, then their mean.

Each member is any registered method with its own backbone. Members score on different scales, so
each one's scores are normalised with statistics of its scores on normal training images:

    s_bar = (s - median(s_train)) / (beta * MAD(s_train)),   beta = 1.4826,  MAD = median |s - median|

(beta * MAD estimates the standard deviation of a normal distribution, robustly). Image scores and
anomaly maps are normalised separately (maps with the statistics of all training-map pixels) and
averaged over the members.

Where the training scores come from (``calibration``):
- ``train`` (the paper): members are fitted on all training images, then score those same images.
  Memory-bank members score images they have memorised lower than unseen normal images, but every
  member alike, so the scales stay comparable; a member that memorises exactly (coreset_ratio 1,
  MAD 0) is refused with an error.
- ``holdout``: a seeded ``holdout_fraction`` of the training images is kept out of fitting and
  scored instead: unbiased statistics, at the price of fitting on fewer images.

Members are configured like top-level methods, ``{method: NAME, backbone: NAME | {backbone config},
KEY: VALUE ...}``; the config layer builds them (``member_key``) and passes the fitted-to-be detectors in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ..errors import ConfigError, unknown_choice
from ..features.backbones import Backbone
from . import register
from .base import AnomalyDetector, Prediction, nbytes

MAD_SCALE = 1.4826  # beta: MAD -> standard deviation of a normal distribution
CALIBRATIONS = ["train", "holdout"]


def robust_stats(scores: np.ndarray) -> tuple[float, float]:
    """(median, beta * MAD) of ``scores`` (any shape)."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    median = float(np.median(values))
    return median, MAD_SCALE * float(np.median(np.abs(values - median)))


def modified_z(scores: np.ndarray, median: float, scale: float) -> np.ndarray:
    """(s - median) / (beta * MAD)."""
    return (np.asarray(scores, dtype=np.float64) - median) / scale


def _rebatch(images: torch.Tensor, batch_size: int) -> list[dict[str, torch.Tensor]]:
    return [{"image": chunk} for chunk in images.split(batch_size)]


@register("ensemble")
class Ensemble(AnomalyDetector):
    member_key = "members"
    param_constraints = {"holdout_fraction": "(0, 1)", "seed": "[0, inf)"}

    def __init__(
        self,
        backbone: Backbone,
        layers: list[str],
        members: Sequence[AnomalyDetector],
        calibration: str = "train",
        holdout_fraction: float = 0.2,
        seed: int = 0,
        device: str = "cpu",
    ):
        super().__init__(backbone, layers, device)
        if not members:
            raise ConfigError("method.members is empty: an ensemble needs at least one member")
        if calibration not in CALIBRATIONS:
            raise unknown_choice("method.calibration", calibration, CALIBRATIONS)
        if calibration == "holdout" and not 0.0 < holdout_fraction < 1.0:
            raise ConfigError(f"method.holdout_fraction must lie in (0, 1), got {holdout_fraction}")
        self.calibration, self.holdout_fraction, self.seed = calibration, holdout_fraction, seed
        self.members = list(members)
        self.member_names = [f"{m.name}@{m.backbone.name}" for m in self.members]
        self.pixel_level = all(m.pixel_level for m in self.members)
        self.stats: torch.Tensor | None = None  # (members, 4): image median, image scale, map median, map scale

    def _fit(self, batches: Iterable[dict]) -> None:
        batch_list = list(self.images(batches, "images"))  # decoded once, shared by every member
        batch_size = batch_list[0].shape[0]
        images = torch.cat(batch_list)
        if self.calibration == "holdout":
            order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(self.seed))
            n_hold = max(1, round(self.holdout_fraction * images.shape[0]))
            if n_hold >= images.shape[0]:
                raise ConfigError(f"method.holdout_fraction={self.holdout_fraction} leaves no image to fit on")
            fit_images, calib_images = images[order[n_hold:]], images[order[:n_hold]]
        else:
            fit_images = calib_images = images
        rows, info = [], []
        for name, member in zip(self.member_names, self.members):
            member.fit(_rebatch(fit_images, batch_size), self.memory_budget)
            predictions = [member.predict(chunk) for chunk in calib_images.split(batch_size)]
            image_stats = robust_stats(np.concatenate([p.image_scores for p in predictions]))
            map_stats = robust_stats(np.concatenate([p.maps for p in predictions])) if self.pixel_level else (0.0, 1.0)
            for what, (_, scale) in (("image scores", image_stats), ("anomaly maps", map_stats)):
                if not scale > 0:
                    raise ConfigError(
                        f"ensemble member {name}: its {what} on the calibration images have MAD 0, so they cannot be "
                        "normalised (it memorises its training images); use method.calibration=holdout"
                    )
            rows.append([*image_stats, *map_stats])
            info.append({"member": name, "image_median": image_stats[0], "image_scale": image_stats[1], "fit_info": member.fit_info,
                         "memory_bank_shape": list(member.memory_bank_shape), "memory_bank_bytes": int(member.memory_bank_bytes)})
        self.stats = torch.tensor(rows, dtype=torch.float64)
        self.fit_info = {"calibration": self.calibration, "calibration_images": int(calib_images.shape[0]), "members": info}

    @torch.no_grad()
    def _predict(self, images: torch.Tensor) -> Prediction:
        image_scores, maps = [], []
        for member, (im_median, im_scale, map_median, map_scale) in zip(self.members, self.stats.tolist()):
            prediction = member.predict(images)
            image_scores.append(modified_z(prediction.image_scores, im_median, im_scale))
            if self.pixel_level:
                maps.append(modified_z(prediction.maps, map_median, map_scale).astype(np.float32))
        return Prediction(np.mean(image_scores, axis=0), np.mean(maps, axis=0) if self.pixel_level else None)

    # --- save / load: every member's state under members.<i>., plus the normalisation statistics ----
    def fitted_state(self) -> dict[str, torch.Tensor]:
        state = {"stats": self.stats.clone()} if self.stats is not None else {}
        for i, member in enumerate(self.members):
            state.update({f"members.{i}.{k}": v for k, v in member.fitted_state().items()})
        return state

    def load_fitted_state(self, state: dict[str, torch.Tensor]) -> Ensemble:
        if "stats" not in state:
            raise KeyError("saved state lacks 'stats'")
        self.stats = state["stats"].to(torch.float64)
        for i, member in enumerate(self.members):
            prefix = f"members.{i}."
            member.load_fitted_state({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        self.is_fitted = True
        return self

    @property
    def memory_bank_bytes(self) -> int:
        """Every member's fitted state plus the normalisation statistics."""
        return nbytes(self.stats) + sum(int(m.memory_bank_bytes) for m in self.members)
