"""ReConPatch (Hyun et al., WACV 2024): a linear patch representation trained with a relaxed contrastive loss.

There is no official code; this follows the paper's equations.

fit:   p = PatchCore patch features of the normal training images (frozen backbone, computed once)
       train f (linear, C -> 512) and projection g on random patch subsets; per step:
         z_bar = g_bar(f_bar(p))                       EMA copies give the pseudo-labels
         w_p   = exp(-||z_bar_i - z_bar_j||^2 / sigma)                             (pairwise)
         w~_ij = |N_k(i) ∩ N_k(j)| / |N_k(i)|  if j in N_k(i) else 0                (contextual)
         w^_ij = mean_{l in N_{k/2}(i)} w~_lj;   w_c = (w^ + w^^T) / 2    (query expansion, symmetric)
         w     = alpha w_p + (1 - alpha) w_c
         z = g(f(p));  delta_ij = ||z_i - z_j|| / mean_n ||z_i - z_n||
         L = 1/N sum_ij  w_ij delta_ij^2 + (1 - w_ij) max(m - delta_ij, 0)^2      (relaxed contrastive)
         step f, g (AdamW, cosine schedule); f_bar, g_bar <- EMA of f, g
       M = greedy-coreset_1% { f(p) }
score: PatchCore: s(p) = min_{m in M} ||f(p) - m||, image score max_p s(p), maps upsampled + blurred.

Backbone features are computed once (the backbone is frozen). An epoch is one pass over the training
images in random groups of ``images_per_step``; each step samples ``patches_per_step`` of the group's
patches, so the N x N similarity matrices stay small enough for a CPU.

N_k(i) holds i itself (its own nearest neighbour), as in the contextual similarity of STML (Kim et al.
2022) that the paper adopts. The optimiser is torch's AdamW rather than the paper's AdamP: the ``adamp``
package has had no release since 2020, and AdamW with the same lr and weight decay is in torch.

Values the paper's text does not give (its implementation details list patch size 3, WRN50 layers 2 + 3,
f: 512-d, 1 % coreset, 120 epochs, AdamP + cosine, lr 1e-5, weight decay 1e-2), and where they come from:
the relaxed contrastive loss and both similarities are STML's (Kim et al., CVPR 2022; tjddus9597/STML-CVPR22
@c39ff1e), whose defaults give sigma = 1 (code/main.py:98), margin delta = 1 (:95), k = 5 neighbours
(num_neighbors, :74) and alpha = 0.5 (W = (W_P + W_C) / 2, code/loss.py:73). The EMA momentum 0.99
(STML: 0.999, main.py:101) and the projection g, linear 512 -> 128, are adbench's choices. All are
listed in ``deviations``.

sigma: the paper's w_p = exp(-||z_bar_i - z_bar_j||^2 / sigma) has no normalisation, so sigma carries the
scale of the features (STML L2-normalises z_bar first, code/loss.py:47, so there sigma = 1 fits). With
sigma = 1 and EfficientNet-Lite features the squared distances are in the hundreds: w_p averages 7e-5 off
the diagonal (bottle; fit_info records it as pairwise_off_diagonal), so the pseudo-label is in effect
w = (1 - alpha) w_c = 0.5 w_c, a declared deviation. ``sigma: null`` sets sigma per step to the median
squared distance of that step's z_bar pairs (the median heuristic; training patches only), a declared
adbench variant.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..errors import ConfigError
from ..features.coreset import coreset_indices
from ..features.maps import upsample_scores
from ..features.nn_search import NearestNeighbours, squared_distances
from ..features.patches import flatten_patches, patch_features
from ..features.store import FeatureStore
from . import register
from .base import AnomalyDetector, Prediction, nbytes
from .training import TrainingLoop, holdout


def pairwise_similarity(z: torch.Tensor, sigma: float | None) -> torch.Tensor:
    """(N, N) w_p = exp(-||z_i - z_j||^2 / sigma); sigma None: the median squared distance of the pairs i != j."""
    sq = squared_distances(z, z)
    if sigma is None:
        off_diagonal = ~torch.eye(len(z), dtype=torch.bool, device=z.device)
        sigma = float(sq[off_diagonal].median().clamp_min(1e-12))
    return torch.exp(-sq / sigma)


def nearest_indices(z: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k) indices of each row's k nearest rows, itself first."""
    dist = squared_distances(z, z)
    dist.fill_diagonal_(-1.0)  # i is its own nearest neighbour, even among duplicates
    return dist.topk(min(k, z.shape[0]), dim=1, largest=False).indices


def contextual_similarity(z: torch.Tensor, k: int) -> torch.Tensor:
    """(N, N) symmetric contextual similarity from k-NN overlap with query expansion over N_{k/2}."""
    n = z.shape[0]
    knn = nearest_indices(z, k)  # N_k(i), |N_k(i)| = k
    k = knn.shape[1]
    member = torch.zeros(n, n, dtype=torch.bool, device=z.device).scatter_(1, knn, True)
    # |N_k(i) ∩ N_k(j)| for the k entries j = knn[i, a]: is knn[i, b] in N_k(knn[i, a])?
    overlap = member[knn[:, :, None], knn[:, None, :]].sum(2).to(z.dtype)  # (N, k)
    tilde = torch.zeros(n, n, dtype=z.dtype, device=z.device).scatter_(1, knn, overlap / k)
    expanded = tilde[knn[:, : max(1, k // 2)]].mean(1)  # w^_ij = mean over l in N_{k/2}(i) of w~_lj
    return (expanded + expanded.T) / 2


def relaxed_contrastive_loss(z: torch.Tensor, w: torch.Tensor, margin: float) -> torch.Tensor:
    """L = 1/N sum_ij w_ij delta_ij^2 + (1 - w_ij) max(m - delta_ij, 0)^2 with mean-normalised distances."""
    sq = squared_distances(z, z)
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    dist = torch.where(eye, torch.zeros_like(sq), sq.clamp_min(1e-12).sqrt())  # finite gradient at i = j
    delta = dist / dist.mean(1, keepdim=True).clamp_min(1e-12)
    loss = w * delta**2 + (1 - w) * torch.relu(margin - delta) ** 2
    return loss.sum(1).mean()


def ema_copy(net: nn.Module, momentum: float) -> AveragedModel:
    """A copy of ``net`` whose ``update_parameters(net)`` does theta_bar <- m theta_bar + (1 - m) theta."""
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(momentum))
    ema.update_parameters(net)  # torch's first update copies; every later one is an EMA step
    return ema


@register("reconpatch")
class ReConPatch(AnomalyDetector):
    param_constraints = {
        "patch_size": "[1, inf)", "embed_dim": "[1, inf)", "feature_dim": "[1, inf)", "head_dim": "[1, inf)", "epochs": "[0, inf)",
        "images_per_step": "[1, inf)", "patches_per_step": "[2, inf)", "lr": "(0, inf)", "weight_decay": "[0, inf)",
        "ema_momentum": "[0, 1]", "k": "[1, inf)", "alpha": "[0, 1]", "sigma": "(0, inf)", "margin": "[0, inf)",
        "val_fraction": "[0, 1)", "patience": "[1, inf)",
        "coreset_ratio": "(0, 1]", "proj_dim": "[1, inf)", "map_sigma": "[0, inf)", "nn_backend": ["auto", "faiss", "torch"],
        "nn_max_block_bytes": "[1, inf)", "seed": "[0, inf)",
    }
    fitted_attributes = ("feature_layer", "bank")
    deviations = (
        "AdamW (paper: AdamP)",
        "patches subsampled per step (CPU memory)",
        "not given in the paper: k 5, margin 1, alpha 0.5 (STML defaults, main.py:74, :95; loss.py:73); EMA 0.99 and "
        "g 512->128 linear (adbench)",
    )

    def __init__(
        self,
        backbone,
        layers: list[str],
        patch_size: int = 3,
        embed_dim: int | None = 1024,
        feature_dim: int = 512,
        head_dim: int = 128,
        epochs: int = 120,
        images_per_step: int = 8,
        patches_per_step: int = 1024,
        lr: float = 1e-5,
        weight_decay: float = 1e-2,
        ema_momentum: float = 0.99,
        k: int = 5,
        alpha: float = 0.5,
        sigma: float | None = 1.0,
        margin: float = 1.0,
        val_fraction: float = 0.0,
        patience: int = 3,
        coreset_ratio: float = 0.01,
        proj_dim: int | None = 128,
        map_sigma: float = 4.0,
        nn_backend: str = "auto",
        nn_max_block_bytes: int = 256 * 2**20,
        seed: int = 0,
        device: str = "cpu",
    ):
        super().__init__(backbone, layers, device)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"method.alpha must lie in [0, 1], got {alpha}")
        if not 0.0 <= ema_momentum < 1.0:
            raise ConfigError(f"method.ema_momentum must lie in [0, 1), got {ema_momentum}")
        if epochs < 0 or images_per_step < 1 or patches_per_step < 2 or k < 1:
            raise ConfigError("method.epochs must be >= 0, images_per_step >= 1, patches_per_step >= 2 and k >= 1")
        self.patch_size, self.embed_dim = patch_size, embed_dim
        self.epochs, self.images_per_step, self.patches_per_step = epochs, images_per_step, patches_per_step
        self.lr, self.weight_decay, self.ema_momentum = lr, weight_decay, ema_momentum
        self.k, self.alpha, self.sigma, self.margin = k, alpha, sigma, margin
        self.val_fraction, self.patience = val_fraction, patience
        self.coreset_ratio, self.proj_dim, self.map_sigma, self.seed = coreset_ratio, proj_dim, map_sigma, seed
        if sigma is None:
            self.deviations = (*self.deviations, "sigma per step = median squared z_bar distance (adbench variant; paper: fixed)")
        else:
            self.deviations = (*self.deviations, f"sigma {sigma:g} on unnormalised z_bar (STML's sigma 1 is for L2-normalised ones, "
                               "loss.py:47): w_p ~ 0 off the diagonal, so w ~ (1 - alpha) w_c")
        in_dim = embed_dim or sum(backbone.channels[layer] for layer in self.layers)  # patch_features' width
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG untouched
            torch.manual_seed(seed)
            self.feature_layer = nn.Linear(in_dim, feature_dim).to(self.device)  # f
            self.projection = nn.Linear(feature_dim, head_dim).to(self.device)  # g (training only)
        self.nn = NearestNeighbours(nn_backend, self.device, nn_max_block_bytes)
        self.bank: torch.Tensor | None = None

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) PatchCore locally aware patch features p."""
        return patch_features(self.layer_maps(images), self.patch_size, self.embed_dim, "avgpool")

    def pseudo_labels(self, z_bar: torch.Tensor) -> tuple[torch.Tensor, float]:
        """w = alpha w_p + (1 - alpha) w_c on the EMA embeddings, and the mean of w_p off the diagonal."""
        pairwise = pairwise_similarity(z_bar, self.sigma)
        off_diagonal = float((pairwise.sum() - pairwise.diagonal().sum()) / max(1, len(z_bar) * (len(z_bar) - 1)))
        return self.alpha * pairwise + (1 - self.alpha) * contextual_similarity(z_bar, self.k), off_diagonal

    def _fit(self, batches: Iterable[dict]) -> None:
        start = time.perf_counter()
        features = FeatureStore(self.memory_budget)  # image-major rows, held once (in RAM or a temporary file past the budget)
        for x in self.images(batches, "features"):
            p = self.patches(x)
            per_image = p.shape[2] * p.shape[3]
            features.append(flatten_patches(p))
        feature_seconds = time.perf_counter() - start
        losses = self.train_representation(features, per_image)
        with torch.no_grad():  # f(p) projected block by block: the N x feature_dim embedding is never held
            keep = coreset_indices(features, self.coreset_ratio, self.proj_dim, self.seed, self.feature_layer, self.device)
            self.bank = self.feature_layer(features.take(keep).to(self.device)).contiguous()
        self.nn.fit(self.bank)
        self.fit_info = {
            "patches": len(features),
            "coreset": int(keep.numel()),
            "feature_seconds": feature_seconds,
            **losses,
        }
        features.close()

    def train_representation(self, features: FeatureStore, per_image: int) -> dict:
        """The contrastive stage: train f and g on ``features`` (n_images * per_image, C)."""
        net = nn.Sequential(self.feature_layer, self.projection).train()
        ema = ema_copy(net, self.ema_momentum)  # f_bar, g_bar
        n_images = len(features) // per_image
        train, val = holdout(n_images, self.val_fraction, self.seed)
        steps_per_epoch = -(-len(train) // self.images_per_step)
        optimiser = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, self.epochs * steps_per_epoch))
        offsets = torch.arange(per_image)

        def patches(group: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            rows = (group[:, None] * per_image + offsets).flatten()
            rows = rows[torch.randperm(rows.numel(), generator=generator)[: self.patches_per_step]]
            return features.take(rows).to(self.device)

        def loss_of(p: torch.Tensor) -> tuple[torch.Tensor, float]:
            with torch.no_grad():
                w, pairwise = self.pseudo_labels(ema.module(p))
            return relaxed_contrastive_loss(net(p), w, self.margin), pairwise

        def step(group: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
            loss, pairwise = loss_of(patches(group, generator))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            ema.update_parameters(net)
            return {"loss": loss.item(), "pairwise_off_diagonal": pairwise}  # ~0: w is the contextual term alone

        def val_loss(group: torch.Tensor) -> float:  # the same patches every epoch
            return loss_of(patches(group, torch.Generator().manual_seed(self.seed + 1 + int(group[0]))))[0].item()

        loop = TrainingLoop(self.epochs, self.images_per_step, self.seed, self.patience, f"{self.name}: contrastive training")
        info = loop.run(net, train, step, val, val_loss)
        history = [e["train_loss"] for e in loop.history]
        return {
            **info,
            "epochs": self.epochs,
            "steps": info["epochs_run"] * steps_per_epoch,
            "train_images_per_s": len(train) * info["epochs_run"] / info["train_seconds"] if info["epochs_run"] else None,
            "loss_first_epoch": history[0] if history else None,
            "loss_last_epoch": history[-1] if history else None,
            "pairwise_off_diagonal_last_epoch": loop.history[-1].get("train_pairwise_off_diagonal") if loop.history else None,
        }

    def _after_load(self) -> None:
        self.nn.fit(self.bank)

    @torch.no_grad()
    def _predict(self, images: torch.Tensor) -> Prediction:
        p = self.patches(images)
        b, _, h, w = p.shape
        dist, _ = self.nn.search(self.feature_layer(flatten_patches(p)), 1)
        scores = dist[:, 0].reshape(b, h, w)
        maps = upsample_scores(scores, tuple(images.shape[-2:]), self.map_sigma)
        return Prediction(scores.flatten(1).amax(1).cpu().numpy().astype(np.float64), maps.cpu().numpy())

    @property
    def memory_bank_shape(self) -> tuple[int, ...]:
        return tuple(self.bank.shape) if self.bank is not None else ()

    @property
    def memory_bank_bytes(self) -> int:
        """The coreset plus f's weights (scoring needs both)."""
        return nbytes(*self.feature_layer.parameters(), self.bank)
