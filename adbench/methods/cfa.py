"""CFA (Lee et al., IEEE Access 2022): coupled-hypersphere-based feature adaptation, compact memory bank.

features: p_t = patch_features(layers 1..3): 3x3 average pool (zero padded, / 9), upsample bilinearly to
          layer 1, concatenate (D, H, W); ``feature_scale: channels`` first divides each layer by its
          channel count (the official code's EfficientNet path), which puts squared distances on the
          scale of r^2 and alpha
phi:      1x1 CoordConv (row / column channels in [-1, 1] appended to p, in the official order), He init,
          D -> width_factor * gamma_d * D channels (official code: width 2 D / gamma_d for EfficientNet, D / gamma_d
          for ResNet and VGG)
bank C:   built once from phi_0 (the untrained phi) of the training images; |C| = gamma_c * H * W,
          independent of the number of training images |X| (Table 1)
            "mean" (official code, utils/cfa.py:80-86 and :30-33): C = mean over the images of the phi_0
                   map; K-means (max_iter 3000, as there) to |C| centres only when gamma_c < 1
            "ema"  (paper Alg. 1):  C_0 = K-means(phi_0(p) of x_0);  for each next image x_i every
                   c_j in turn takes its nearest feature of x_i not taken yet (C_i^NN), then
                   C_i = (1 - beta) C_{i-1} + beta C_i^NN; the paper gives no beta: by default
                   beta = 1/(i+1), which makes C the running mean of C_0 and the matched features
loss:     c_t^k = k-th nearest centre of phi(p_t), D = squared Euclidean distance (as the official code)
          L_att = 1/(TK) sum_t sum_{k<=K}    max(0, D(phi(p_t), c_t^k) - r^2)              (Eq. 2)
          L_rep = 1/(TJ) sum_t sum_{K<j<=K+J} max(0, r^2 - D(phi(p_t), c_t^j) - alpha)     (Eq. 3)
          L_CFA = L_att + L_rep; r learnable (init 1e-5); AdamW (amsgrad, lr 1e-3, wd 5e-4) on phi and r,
          30 epochs of batches of 4 (official trainer_cfa.py; incomplete last batch dropped, as there)
score:    d_k = ||phi(p_t) - c_t^k||, S_t = d_1, A_t = softmin(d_1..d_K)_1 * S_t              (Eq. 5)
          maps: A upsampled, Gaussian sigma = 4; image score = max of the map.

Views (CFA++, Table 2): ``resize`` is the whole input, ``crop`` its centre ``crop_fraction``; both are
resized to ``view_size`` and get their own phi, r and bank. The paper only says CFA++ "ensembles the
results" of the two; here the views' patch scores, standardised with the mean and std of their
training images' patch scores, are averaged where they overlap (the border has only the resize view). With a 256 px uncropped input, view_size 224 and crop_fraction 0.875 the two views are
exactly the paper's "resize to 224" and "resize to 256, crop 224" samples.

Model selection is honest: the official 30 epochs (default), or early stopping on the CFA loss of a
validation split held out of train/good (``val_fraction`` > 0; conf/experiment/cfa_early_stop.yaml).
The test set is never seen (the official trainer reports the best test score over its 30 epochs).
The official code's 1/nu = 1000 loss factor (utils/cfa.py:16, :71, :74; not in the paper's Eq. 2-3) is left
out: AdamW's update is invariant to it up to eps (tests/reference/test_parity.py checks one step against it).
The radius starts at 1e-5 and AdamW moves it by about lr per step, so L_rep (zero while r^2 <= alpha)
only acts after a few hundred steps: with fewer epochs CFA is CFA without L_rep (Table 5's "att").
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import nn

from ..errors import ConfigError, unknown_choice
from ..features.maps import upsample_scores
from ..features.nn_search import NearestNeighbours
from ..features.patches import flatten_patches, patch_features
from . import register
from .base import AnomalyDetector, Prediction, nbytes
from .training import TrainingLoop, holdout

ADAPTATIONS = ["none", "att", "att_rep"]  # Table 5: no adaptation / L_att only / L_att + L_rep
BANK_INITS = ["mean", "ema"]
FEATURE_SCALES = ["none", "channels"]
VIEWS = ["resize", "crop"]


def attraction_loss(sq_dist: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """L_att (Eq. 2): mean of max(0, D - r^2) over patches x their K nearest centres; ``sq_dist`` (N, K)."""
    return F.relu(sq_dist - radius**2).mean()


def repulsion_loss(sq_dist: torch.Tensor, radius: torch.Tensor, alpha: float) -> torch.Tensor:
    """L_rep (Eq. 3): mean of max(0, r^2 - D - alpha) over patches x their J hard negatives; (N, J)."""
    return F.relu(radius**2 - sq_dist - alpha).mean()


class CoordConv(nn.Module):
    """The patch descriptor phi: a 1x1 convolution over the features and two coordinate channels."""

    def __init__(self, in_dim: int, out_dim: int, generator: torch.Generator | None = None):
        super().__init__()
        self.conv = nn.Conv2d(in_dim + 2, out_dim, kernel_size=1)
        nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu", generator=generator)  # He init
        nn.init.zeros_(self.conv.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, _, h, w = features.shape
        rows = torch.linspace(-1, 1, h, device=features.device, dtype=features.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
        cols = torch.linspace(-1, 1, w, device=features.device, dtype=features.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
        return self.conv(torch.cat([features, rows, cols], dim=1))  # official AddCoords order: row, then column


class CFAHead(nn.Module):
    """What one view learns: the descriptor phi and the hypersphere radius r."""

    def __init__(self, in_dim: int, out_dim: int, radius: float, generator: torch.Generator | None = None):
        super().__init__()
        self.descriptor = CoordConv(in_dim, out_dim, generator)
        self.radius = nn.Parameter(torch.tensor([float(radius)]))


def kmeans_centres(points: torch.Tensor, n_centres: int, seed: int) -> torch.Tensor:
    """``n_centres`` K-means centres of ``points`` (N, D); the points themselves when N == n_centres."""
    if n_centres >= points.shape[0]:
        return points.clone()
    # max_iter 3000 as the official code (utils/cfa.py:32); one k-means++ start (scikit-learn's n_init="auto")
    km = KMeans(n_clusters=n_centres, n_init=1, max_iter=3000, random_state=seed).fit(points.double().cpu().numpy())
    return torch.from_numpy(km.cluster_centers_).to(points)


def greedy_nearest(centres: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Alg. 1's inner loop: each centre in turn takes its nearest candidate not taken by an earlier one."""
    if candidates.shape[0] < centres.shape[0]:
        raise ValueError(f"{candidates.shape[0]} candidates cannot match {centres.shape[0]} centres one to one")
    dist = torch.cdist(centres.double(), candidates.double()).cpu().numpy()
    chosen = np.empty(centres.shape[0], dtype=np.int64)
    for j in range(centres.shape[0]):
        chosen[j] = dist[j].argmin()
        dist[j + 1 :, chosen[j]] = np.inf
    return candidates[torch.from_numpy(chosen).to(candidates.device)]


@register("cfa")
class CFA(AnomalyDetector):
    param_constraints = {
        "patch_size": "[1, inf)", "width_factor": "(0, inf)", "gamma_d": "(0, 1]", "gamma_c": "(0, 1]", "ema_beta": "(0, 1)", "num_neighbors": "[1, inf)",
        "num_hard_negatives": "[0, inf)", "alpha": "[0, inf)", "radius_init": "[0, inf)", "epochs": "[0, inf)",
        "train_batch_size": "[1, inf)", "lr": "(0, inf)", "weight_decay": "[0, inf)", "val_fraction": "[0, 1)",
        "patience": "[1, inf)", "crop_fraction": "(0, 1]", "sigma": "[0, inf)", "nn_backend": ["auto", "faiss", "torch"], "seed": "[0, inf)",
    }
    fitted_attributes = ("heads", "bank", "score_stats")
    default_views: tuple[str, ...] = ("resize",)

    def __init__(
        self,
        backbone,
        layers: list[str],
        patch_size: int = 3,
        feature_scale: str = "none",
        width_factor: float = 1.0,
        gamma_d: float = 1.0,
        gamma_c: float = 1.0,
        bank_init: str = "mean",
        ema_beta: float | None = None,
        num_neighbors: int = 3,
        num_hard_negatives: int = 3,
        alpha: float = 0.1,
        radius_init: float = 1e-5,
        adaptation: str = "att_rep",
        epochs: int = 30,
        train_batch_size: int = 4,
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        val_fraction: float = 0.0,
        patience: int = 3,
        views: Sequence[str] | None = None,
        view_size: int | None = None,
        crop_fraction: float = 0.875,
        input_resize: int | None = None,
        input_crop: int | None = None,
        sigma: float = 4.0,
        nn_backend: str = "auto",
        seed: int = 0,
        device: str = "cpu",
    ):
        super().__init__(backbone, layers, device)
        if adaptation not in ADAPTATIONS:
            raise unknown_choice("method.adaptation", adaptation, ADAPTATIONS)
        if feature_scale not in FEATURE_SCALES:
            raise unknown_choice("method.feature_scale", feature_scale, FEATURE_SCALES)
        if bank_init not in BANK_INITS:
            raise unknown_choice("method.bank_init", bank_init, BANK_INITS)
        for key, value in (("gamma_d", gamma_d), ("gamma_c", gamma_c), ("crop_fraction", crop_fraction)):
            if not 0 < value <= 1:
                raise ConfigError(f"method.{key} must lie in (0, 1], got {value}")
        if ema_beta is not None and not 0 < ema_beta <= 1:
            raise ConfigError(f"method.ema_beta must lie in (0, 1] or be null (running mean), got {ema_beta}")
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"method.val_fraction must lie in [0, 1), got {val_fraction}")
        if epochs < 0 or train_batch_size < 1 or num_neighbors < 1 or num_hard_negatives < 0:
            raise ConfigError("method.epochs >= 0, method.train_batch_size >= 1, method.num_neighbors >= 1 and method.num_hard_negatives >= 0 required")
        views = list(self.default_views if views is None else views)
        if not views or len(set(views)) != len(views) or any(v not in VIEWS for v in views) or "resize" not in views:
            raise ConfigError(f"method.views must list distinct views from {VIEWS} including 'resize' (it covers the whole image), got {views}")
        if "crop" in views and input_resize is not None and input_crop != input_resize:
            raise ConfigError(
                f"method.views has 'crop' (CFA++): the crop view is cut from the whole image, so the input must be uncropped, "
                f"but dataset.crop={input_crop} != dataset.resize={input_resize}; set dataset.crop={input_resize}"
            )
        self.patch_size, self.feature_scale, self.gamma_d, self.gamma_c = patch_size, feature_scale, gamma_d, gamma_c
        self.width_factor = width_factor
        self.bank_init, self.ema_beta = bank_init, ema_beta
        self.num_neighbors, self.num_hard_negatives, self.alpha = num_neighbors, num_hard_negatives, alpha
        self.adaptation, self.epochs, self.train_batch_size = adaptation, epochs, train_batch_size
        self.lr, self.weight_decay, self.val_fraction, self.patience = lr, weight_decay, val_fraction, patience
        self.views, self.view_size, self.crop_fraction = views, view_size, crop_fraction
        self.sigma, self.seed = sigma, seed
        # torch search on CUDA: the faiss-cpu index would copy every query batch to the host
        self.nn_backend = "torch" if nn_backend == "auto" and self.device.type == "cuda" else nn_backend
        in_dim = sum(backbone.channels[layer] for layer in self.layers)
        out_dim = max(1, round(width_factor * in_dim * gamma_d))
        generators = [torch.Generator().manual_seed(seed + i) for i in range(len(views))]
        self.heads = nn.ModuleList(CFAHead(in_dim, out_dim, radius_init, g) for g in generators).to(self.device)
        self.bank: torch.Tensor | None = None  # (views, |C|, D')
        self.score_stats = torch.tensor([[0.0, 1.0]] * len(views), device=self.device)  # per view: mean, std
        self._indices: list[NearestNeighbours] = []
        self.deviations = self._deviations()

    def _deviations(self) -> tuple[str, ...]:
        """What these settings change from the paper (policy: the paper is the reference)."""
        out = []
        if self.bank_init == "mean":
            out.append("bank = mean phi_0 map of the training images, official code utils/cfa.py:80-86 (paper Alg. 1: K-means on "
                       "x_0, then EMA; bank_init=ema)")
        elif self.ema_beta is None:
            out.append("Alg. 1 EMA beta not given in the paper: beta = 1/(i+1), a running mean (set method.ema_beta)")
        if self.feature_scale == "channels" or self.width_factor != 1:
            out.append("layers / channel count, descriptor width 2 D: the official code's EfficientNet path, utils/cfa.py:99-101, "
                       ":110 (paper: WRN50-2, unscaled, width D)")
        if len(self.views) > 1:
            out.append("views fused by z-scoring each on its training patch scores, then the mean (paper: 'ensembles', rule not given)")
        if "crop" in self.views:
            out.append("scored on the uncropped 256 px image (others: 224 px centre crop)")
        return tuple(out)

    # --- features and views -----------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) patch features p; ``channels`` divides each layer by its width (official EfficientNet path)."""
        maps = self.layer_maps(images)
        if self.feature_scale == "channels":
            maps = [m / m.shape[1] for m in maps]
        return patch_features(maps, self.patch_size)

    def _region(self, view: str, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the input that ``view`` shows (torchvision's centre crop)."""
        if view == "resize":
            return 0, 0, size[0], size[1]
        h, w = round(size[0] * self.crop_fraction), round(size[1] * self.crop_fraction)
        return round((size[0] - h) / 2), round((size[1] - w) / 2), h, w

    def view(self, images: torch.Tensor, view: str) -> torch.Tensor:
        """The view's image: its region of the input, resized to ``view_size`` (default: input size)."""
        size = tuple(images.shape[-2:])
        top, left, h, w = self._region(view, size)
        crop = images[..., top : top + h, left : left + w]
        target = (self.view_size, self.view_size) if self.view_size else size
        if tuple(crop.shape[-2:]) == target:
            return crop
        return F.interpolate(crop, size=target, mode="bilinear", align_corners=False, antialias=True)

    # --- memory bank ------------------------------------------------------------------------------
    @torch.no_grad()
    def _descriptors(self, head: CFAHead, features: torch.Tensor, chunk: int = 16) -> Iterable[torch.Tensor]:
        """phi maps (b, D', h, w) of the cached features, in chunks."""
        for part in features.split(chunk):
            yield head.descriptor(part.to(self.device))

    @torch.no_grad()
    def build_bank(self, head: CFAHead, features: torch.Tensor) -> torch.Tensor:
        """The memory bank C (|C|, D') from phi_0 of the training features; |C| = gamma_c * h * w."""
        n_patches = features.shape[-2] * features.shape[-1]
        n_centres = max(1, round(self.gamma_c * n_patches))
        if n_centres < self.num_neighbors + self.num_hard_negatives:
            raise ConfigError(
                f"method.gamma_c={self.gamma_c} leaves {n_centres} memory-bank centres ({n_patches} patches per image); "
                f"K + J = {self.num_neighbors + self.num_hard_negatives} needed"
            )
        if self.bank_init == "mean":  # official code: the mean descriptor map, then K-means
            total = sum(phi.sum(0) for phi in self._descriptors(head, features))
            mean_map = flatten_patches((total / features.shape[0])[None])
            return kmeans_centres(mean_map, n_centres, self.seed)
        bank = None  # paper Alg. 1
        for phi in self._descriptors(head, features):
            for image in phi:
                patches = flatten_patches(image[None])
                if bank is None:
                    bank, seen = kmeans_centres(patches, n_centres, self.seed), 1
                    continue
                beta = self.ema_beta if self.ema_beta is not None else 1 / (seen + 1)
                bank = (1 - beta) * bank + beta * greedy_nearest(bank, patches)
                seen += 1
        return bank

    # --- training ---------------------------------------------------------------------------------
    def cfa_losses(self, head: CFAHead, features: torch.Tensor, bank: torch.Tensor, index: NearestNeighbours) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_att, L_rep) of a batch of cached features (B, D, h, w); L_rep is 0 for ``adaptation: att``."""
        phi = flatten_patches(head.descriptor(features))
        k, j = self.num_neighbors, self.num_hard_negatives if self.adaptation == "att_rep" else 0
        with torch.no_grad():
            _, nearest = index.search(phi.detach(), k + j)
        sq_dist = (phi[:, None, :] - bank[nearest]).pow(2).sum(-1)  # (N, K + J), differentiable in phi
        rep = repulsion_loss(sq_dist[:, k:], head.radius, self.alpha) if j else sq_dist.new_zeros(())
        return attraction_loss(sq_dist[:, :k], head.radius), rep

    def cfa_loss(self, head: CFAHead, features: torch.Tensor, bank: torch.Tensor, index: NearestNeighbours) -> torch.Tensor:
        """L_CFA = L_att + L_rep of a batch of cached features (B, D, h, w)."""
        return sum(self.cfa_losses(head, features, bank, index))

    def _train(self, head: CFAHead, bank: torch.Tensor, features: torch.Tensor, train: torch.Tensor, val: torch.Tensor, view: str) -> dict:
        """Optimise phi and r for ``epochs`` (or until the validation loss stops improving)."""
        index = NearestNeighbours(self.nn_backend, self.device).fit(bank)
        optimiser = torch.optim.AdamW(head.parameters(), lr=self.lr, weight_decay=self.weight_decay, amsgrad=True)

        def batch_of(items: torch.Tensor) -> torch.Tensor:
            return features[items.to(features.device)].to(self.device)

        def step(items: torch.Tensor, _: torch.Generator) -> dict[str, float]:
            if len(items) < self.train_batch_size <= len(train):  # the official loader drops the incomplete last batch
                return {}
            att, rep = self.cfa_losses(head, batch_of(items), bank, index)
            optimiser.zero_grad(set_to_none=True)
            (att + rep).backward()
            optimiser.step()
            return {"loss": att.item() + rep.item(), "att": att.item(), "rep": rep.item(), "rep_active": float(rep.item() > 0)}

        loop = TrainingLoop(self.epochs, self.train_batch_size, self.seed, self.patience, f"{self.name}: train {view}")
        info = loop.run(head, train, step, val, lambda items: self.cfa_loss(head, batch_of(items), bank, index).item())
        info["radius"] = head.radius.item()
        info["rep_active_epochs"] = sum(e.get("train_rep_active", 0.0) > 0 for e in loop.history)
        return info

    # --- fit / predict ----------------------------------------------------------------------------
    def _fit(self, batches: Iterable[dict]) -> None:
        start = time.perf_counter()
        cached: dict[str, list[torch.Tensor]] = {v: [] for v in self.views}
        for x in self.images(batches, "features"):  # the frozen backbone runs once per image and view
            for v in self.views:
                cached[v].append(self.embed(self.view(x, v)))
        feature_seconds = time.perf_counter() - start
        banks, stats, per_view = [], [], {}
        for v, head in zip(self.views, self.heads):
            features = torch.cat(cached.pop(v))
            n_patches = features.shape[-2] * features.shape[-1]
            train, val = holdout(features.shape[0], self.val_fraction, self.seed)
            bank = self.build_bank(head, features[train.to(features.device)])
            per_view[v] = self._train(head, bank, features, train, val, v) if self.adaptation != "none" and self.epochs else {"epochs_run": 0}
            banks.append(bank)
            if len(self.views) > 1:  # standardise each view's scores on its training images
                index = NearestNeighbours(self.nn_backend, self.device).fit(bank)
                scores = torch.cat([self._patch_scores(head, index, f[None]).flatten() for f in features[train.to(features.device)]])
                stats.append(torch.stack([scores.mean(), scores.std().clamp_min(1e-12)]))
            del features
        self.bank = torch.stack(banks)
        if stats:
            self.score_stats = torch.stack(stats)
        self._after_load()
        trained = [info for info in per_view.values() if "selection" in info]
        selection = trained[0]["selection"] if trained else "no training (phi_0)"
        self.fit_info = {
            "selection": selection,
            "adaptation": self.adaptation,
            "bank_init": self.bank_init,
            "train_images": len(train),
            "val_images": len(val),
            "patches_per_image": n_patches,
            "bank_centres": int(self.bank.shape[1]),
            "descriptor_dims": int(self.bank.shape[2]),
            "feature_seconds": round(feature_seconds, 3),
            "views": per_view,
        }

    def _after_load(self) -> None:
        self._indices = [NearestNeighbours(self.nn_backend, self.device).fit(bank) for bank in self.bank]

    @torch.no_grad()
    def _patch_scores(self, head: CFAHead, index: NearestNeighbours, features: torch.Tensor) -> torch.Tensor:
        """(B, h, w) A_t = softmin over the K nearest distances (weight of the nearest) x S_t (Eq. 5)."""
        b, _, h, w = features.shape
        dist, _ = index.search(flatten_patches(head.descriptor(features.to(self.device))), self.num_neighbors)
        return (F.softmin(dist, dim=1)[:, 0] * dist[:, 0]).reshape(b, h, w)

    @torch.no_grad()
    def _predict(self, images: torch.Tensor) -> Prediction:
        images = images.to(self.device)
        size = tuple(images.shape[-2:])
        total = torch.zeros(images.shape[0], *size, device=self.device)
        count = torch.zeros(size, device=self.device)
        for v, head, index, (mean, std) in zip(self.views, self.heads, self._indices, self.score_stats):
            scores = (self._patch_scores(head, index, self.embed(self.view(images, v))) - mean) / std
            top, left, h, w = self._region(v, size)
            total[:, top : top + h, left : left + w] += F.interpolate(scores[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
            count[top : top + h, left : left + w] += 1
        maps = upsample_scores(total / count, size, self.sigma)
        return Prediction(maps.flatten(1).amax(1).cpu().numpy().astype(np.float64), maps.cpu().numpy())

    @property
    def memory_bank_shape(self) -> tuple[int, ...]:
        return () if self.bank is None else (self.bank.shape[0] * self.bank.shape[1], self.bank.shape[2])

    @property
    def memory_bank_bytes(self) -> int:
        """Bank C, descriptors phi with r, and the score standardisation: all scoring needs."""
        return 0 if self.bank is None else nbytes(*self.fitted_state().values())
