"""PatchCore (Roth et al., CVPR 2022): locally aware patch features, greedy coreset memory bank, 1-NN.

phi:   3x3 mean of each layer (zero padded, / 9), each layer pooled along its channels to embed_dim,
       deeper layers upsampled bilinearly, the L x embed_dim stack pooled to embed_dim
       (patchcore-inspection's Preprocessing + Aggregator: every layer weighs the same)   (Eq. 2-3)
fit:   M = greedy-coreset_ratio( {phi(p) : p patch of a normal image} )              (Alg. 1)
score: s(p) = min_{m in M} ||phi(p) - m||;  image score s* = max_p s(p)                (Eq. 6)
       optional re-weighting (Eq. 7): s = (1 - exp||m_t* - m*|| / sum_{m in N_b(m*)} exp||m_t* - m||) s*
maps:  patch scores upsampled bilinearly, Gaussian sigma = 4.
stored: phi(p) = B x(p) is linear in the stacked channels x(p) (``features.patches``); when rank(B) <
       embed_dim (Lite0: 152 < 1024) the bank holds R x(p), ||R v|| = ||B v||: the same distances,
       neighbours and coreset projection, a narrower bank (``reduce_rank=False``: B x(p) itself).

Beside patchcore-inspection (amazon-science/patchcore-inspection @fcaa92f): it pools each flattened
C x 3 x 3 neighbourhood to embed_dim in one step, which equals the 3x3 mean + channel pooling here when C
is a multiple of embed_dim (WRN50 layer3) and not otherwise (layer2 mixes half neighbourhoods). It scores
squared distances (faiss IndexFlatL2, src/patchcore/common.py:48, mean at :349); Eq. 6 and anomalib use
the Euclidean distance, as here (the paper is the reference: not a deviation; image AUROC is the same
either way, the blurred maps are not). It has no Eq. 7: its image score is the max patch score
(src/patchcore/patchcore.py:213-218), and so is adbench's default (``reweight: false``), a declared
deviation from the paper. anomalib keeps the concatenation unreduced (``embed_dim: null``), applies Eq. 7
and upsamples maps nearest; its Gaussian blur (torch reflect padding) is the one used here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import torch

from ..features.coreset import coreset_indices
from ..features.maps import upsample_scores
from ..features.memory import pieces, recycle_freed_memory
from ..features.nn_search import NearestNeighbours
from ..features.patches import LowRank, channel_matrix, flatten_patches, patch_features, stacked_patch_maps
from ..features.store import FeatureStore
from . import register
from .base import AnomalyDetector, Prediction, nbytes


@register("patchcore")
class PatchCore(AnomalyDetector):
    param_constraints = {
        "patch_size": "[1, inf)", "embed_dim": "[1, inf)", "coreset_ratio": "(0, 1]", "proj_dim": "[1, inf)",
        "num_neighbors": "[1, inf)", "reweight_neighbors": "[1, inf)", "sigma": "[0, inf)",
        "nn_backend": ["auto", "faiss", "torch"], "nn_max_block_bytes": "[1, inf)", "seed": "[0, inf)",
    }
    fitted_attributes = ("bank",)
    legacy_params: ClassVar[dict[str, Any]] = {"reduce_rank": False}  # records written before the key: the literal bank

    def __init__(
        self,
        backbone,
        layers: list[str],
        patch_size: int = 3,
        embed_dim: int | None = 1024,
        coreset_ratio: float = 0.1,
        proj_dim: int | None = 128,
        num_neighbors: int = 1,
        reweight: bool = False,
        reweight_neighbors: int = 9,
        sigma: float = 4.0,
        nn_backend: str = "auto",
        nn_max_block_bytes: int = 256 * 2**20,
        seed: int = 0,
        device: str = "cpu",
        reduce_rank: bool = True,
    ):
        super().__init__(backbone, layers, device)
        self.patch_size, self.embed_dim, self.coreset_ratio, self.proj_dim = patch_size, embed_dim, coreset_ratio, proj_dim
        self.num_neighbors, self.reweight, self.reweight_neighbors = num_neighbors, reweight, reweight_neighbors
        self.sigma, self.seed, self.reduce_rank = sigma, seed, reduce_rank
        self.nn = NearestNeighbours(nn_backend, self.device, nn_max_block_bytes)
        self.bank: torch.Tensor | None = None
        if not reweight:
            self.deviations = ("no Eq. 7 image-score re-weighting, as patchcore-inspection (patchcore.py:213-218); "
                               "method.reweight=true applies it",)
        self.low_rank: LowRank | None = None  # the factor B = U R of the embedding (from the layers' channels)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) locally aware patch features: B x, or R x (D = rank) when the reduced bank is used."""
        maps = self.layer_maps(images)
        if self.embed_dim is not None and self.low_rank is None:
            self.low_rank = LowRank(channel_matrix([m.shape[1] for m in maps], self.embed_dim))
        if self.reduced:
            return self.low_rank.apply(stacked_patch_maps(maps, self.patch_size))
        return patch_features(maps, self.patch_size, self.embed_dim, "avgpool")

    @property
    def reduced(self) -> bool:
        """Features and bank are R x (``reduce_rank`` and rank < embed_dim)."""
        return self.reduce_rank and self.low_rank is not None and self.low_rank.reduces

    def _fit(self, batches: Iterable[dict]) -> None:
        recycle_freed_memory()
        features = FeatureStore(self.memory_budget)  # held once, in RAM or a temporary file past the budget
        for x in self.images(batches, "features"):
            for piece in self._pieces(x):
                features.append(flatten_patches(self.embed(piece)))
        basis = self.low_rank.basis if self.reduced else None  # the coreset projects B x = U (R x) as B x
        keep = coreset_indices(features, self.coreset_ratio, self.proj_dim, self.seed, device=self.device, basis=basis)
        self.bank = (features.tensor() if self.coreset_ratio >= 1 else features.take(keep)).to(self.device).contiguous()
        self.nn.fit(self.bank)
        self.fit_info = {"patches": len(features), "coreset": int(keep.numel()), "features_spilled": features.spilled,
                         "embed_dim": self.embed_dim, "stored_dim": int(self.bank.shape[1]),
                         "rank": None if self.low_rank is None else self.low_rank.rank}
        features.close()

    def _pieces(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """On CPU, the batch in pieces whose temporaries glibc recycles (``features.memory``); on a GPU, whole."""
        return pieces(images) if self.device.type == "cpu" else (images,)

    def _after_load(self) -> None:
        if self.embed_dim is not None and self.bank.shape[1] == self.embed_dim:
            self.reduce_rank = False  # a full-width bank (reduce_rank=false, or saved before the reduction existed)
        self.nn.fit(self.bank)

    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """(B, h, w) distance of each patch to its nearest memory-bank entry (mean of k if k > 1)."""
        b, _, h, w = features.shape
        dist, _ = self.nn.search(flatten_patches(features), self.num_neighbors)
        return dist.mean(1).reshape(b, h, w)

    def _reweighted(self, features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Eq. 7: down-weight s* when the nearest bank entry m* lies in a dense bank region."""
        flat = flatten_patches(features).reshape(features.shape[0], -1, features.shape[1])
        worst = scores.flatten(1).argmax(1)
        test_star = flat[torch.arange(flat.shape[0]), worst]  # m_test,*
        _, nearest = self.nn.search(test_star, 1)  # m*
        _, hood = self.nn.search(self.bank[nearest[:, 0]], self.reweight_neighbors)  # N_b(m*), m* first
        dist = torch.linalg.vector_norm(self.bank[hood] - test_star[:, None].to(self.bank.device), dim=2)
        weight = 1 - torch.softmax(dist, dim=1)[:, 0]
        return weight.to(scores.device) * scores.flatten(1).amax(1)

    @torch.no_grad()
    def _predict(self, images: torch.Tensor) -> Prediction:
        image, scores = [], []
        for piece in self._pieces(images):
            features = self.embed(piece)
            scores.append(self.patch_scores(features))
            image.append(self._reweighted(features, scores[-1]) if self.reweight else scores[-1].flatten(1).amax(1))
        image = torch.cat(image).cpu().numpy().astype(np.float64)
        if not self.compute_maps:  # image-level data: no upsampled, blurred maps
            return Prediction(image)
        maps = upsample_scores(torch.cat(scores), tuple(images.shape[-2:]), self.sigma)
        return Prediction(image, maps.cpu().numpy())

    @property
    def memory_bank_shape(self) -> tuple[int, ...]:
        return tuple(self.bank.shape) if self.bank is not None else ()

    @property
    def memory_bank_bytes(self) -> int:
        return nbytes(self.bank)
