"""FCDD (Liznerski et al., ICLR 2021): fully convolutional data description with explanation heat maps.

network:  phi = 1x1 convolutions on the frozen backbone's stride-8 stage (u x v output, one channel)
          A(X) = sqrt(phi(X)^2 + 1) - 1                       pseudo-Huber, per output pixel    (Eq. 2)
loss:     HSC over a batch, y = 1 for anomalies                                                 (Eq. 3)
          (1 - y) * mean A(X)  -  y * log(1 - exp(-mean A(X)))
          with ground-truth maps Y of the anomalies (semi-supervised form, A' = upsampled A)    (Eq. 5)
          mean((1 - Y) * A'(X))  -  log(1 - exp(-mean(Y * A'(X))))
outliers: synthetic "confetti" anomalies made from the training images (the paper's MVTec outlier
          exposure) and, when the training batches carry them, labelled real anomalies (label 1 + mask)
maps:     A(X) upsampled by a strided transposed convolution with a fixed Gaussian kernel that spans
          the receptive field of one output pixel (Alg. 1)
score:    image score = mean of A(X) (default; the normal term of Eq. 3) or its max
training: the authors' MVTec defaults (liznerski/fcdd @4fa8502, python/fcdd/runners/argparse_configs.py
          DefaultMvtecConfig, lines 189-197, and the parser defaults it keeps, lines 49-65;
          training/setup.py pick_opt_sched, lines 34-42): lr 1e-3 (:52), weight decay 1e-4 (:194),
          learning rate x 0.985 after every epoch (:59, :65), 200 epochs (:194), 128 samples per step
          (16 x 8 accumulated batches, :193), about half of them anomalies; their optimiser choices are SGD
          (Nesterov, momentum 0.9, setup.py:35; the MVTec default, :55) and Adam (setup.py:37). Here Adam
          is the default: with only the 1x1 head training, SGD leaves the training HSC loss near its start
          (bottle, 200 epochs: 0.55, from 0.73; Adam: 0.2), a choice made on the training loss alone

Deviations from the paper and the authors' network (CPU budget), listed in ``deviations``: the authors'
FCDD_CNN224_VGG_F (models/fcdd_cnn_224.py) freezes VGG11-BN up to stride 8 (:119-126) and trains two 3x3
conv-512 + BN + ReLU layers (:89-94) and the final 1x1 conv (:107); here the shared EfficientNet-Lite0
stays frozen and only a 1x1 -> 128 -> 1x1 head on its stride-8 stage trains. That lets fit() extract
the features of the normal images and of a fixed pool of synthetic anomalies once, then train the head
on them for many epochs (the authors' "offline supervision" option; their default is online,
argparse_configs.py:160: fresh confetti every step). No local contrast normalisation or augmentation
(the authors' MVTec preprocessing "lcnaug1", :194).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import gaussian_blur
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError
from ..features.backbones import Backbone
from . import register
from .base import AnomalyDetector, Prediction, nbytes
from .training import TrainingLoop, holdout

IMAGE_SCORES = ("mean", "max")
OPTIMIZERS = ("adam", "sgd")  # the authors' two choices (pick_opt_sched)


def pseudo_huber(phi: torch.Tensor) -> torch.Tensor:
    """A(X) = sqrt(phi^2 + 1) - 1, element-wise (Eq. 2)."""
    return torch.sqrt(phi.square() + 1) - 1


def _anomalous_term(mean_a: torch.Tensor) -> torch.Tensor:
    """-log(1 - exp(-m)), computed as -log(-expm1(-m)); m is clamped away from 0 (where it is +inf)."""
    return -torch.log(-torch.expm1(-mean_a.clamp_min(1e-12)))


def hsc_loss(a: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 3 on (B, u, v) maps A(X): normal samples (label 0) minimise mean A, anomalies maximise it."""
    mean_a = a.flatten(1).mean(1)
    anomalous = labels.bool()
    return torch.where(anomalous, _anomalous_term(mean_a), mean_a).mean()


def pixel_hsc_loss(a_up: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Eq. 5 on (B, H, W) upsampled maps A'(X) with ground-truth maps Y (1 = anomalous pixel).

    Both terms average over all m = H * W pixels; samples without anomalous pixels add no second term.
    """
    masks = masks.to(a_up.dtype).flatten(1)
    a_up = a_up.flatten(1)
    normal = ((1 - masks) * a_up).mean(1)
    has_anomaly = masks.sum(1) > 0
    anomalous = torch.where(has_anomaly, _anomalous_term((masks * a_up).mean(1)), torch.zeros_like(normal))
    return (normal + anomalous).mean()


# --- receptive-field upsampling (Alg. 1) ---------------------------------------------------------


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of one output pixel: ``size`` px wide (square), output pixels ``stride`` px
    apart, output pixel (0, 0) centred on input pixel ``offset`` = (row, column)."""

    size: int
    stride: int
    offset: tuple[float, float]


def measure_receptive_field(backbone: Backbone, layer: str, image_size: tuple[int, int]) -> ReceptiveField:
    """Receptive field of ``layer`` for inputs of ``image_size``: the input pixels where the gradient
    of one central output pixel is non-zero (union over two random inputs, so that a ReLU that
    happens to be off hides no pixel). The probe image is ``image_size`` grown by steps of 2 x stride
    (which keep its padding pattern) to at least 160 px and until the field does not reach its border.
    """
    stride = backbone.strides[layer]
    captured: list[torch.Tensor] = []
    handle = backbone.model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: captured.append(out))
    device = next(backbone.parameters()).device
    step = 2 * stride
    height, width = (n + step * max(0, math.ceil((160 - n) / step)) for n in image_size)
    try:
        while True:
            x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_()
            captured.clear()
            with torch.enable_grad():
                backbone.model(x)
                ci, cj = captured[0].shape[-2] // 2, captured[0].shape[-1] // 2
                (grad,) = torch.autograd.grad(captured[0][:, :, ci, cj].sum(), x)
            support = grad.abs().sum((0, 1)).cpu() > 0
            rows, cols = support.any(1).nonzero()[:, 0], support.any(0).nonzero()[:, 0]
            if rows.min() > 0 and cols.min() > 0 and rows.max() < height - 1 and cols.max() < width - 1:
                break
            height, width = height + step, width + step
    finally:
        handle.remove()
    size = int(max(rows.max() - rows.min(), cols.max() - cols.min())) + 1
    offset = (float(rows.min() + rows.max()) / 2 - ci * stride, float(cols.min() + cols.max()) / 2 - cj * stride)
    return ReceptiveField(size, stride, offset)


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """(size, size) Gaussian with peak 1 at the centre: the fixed kernel of Alg. 1."""
    t = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-t.square() / (2 * sigma**2))
    return g[:, None] * g[None, :]


def receptive_upsample(scores: torch.Tensor, size: tuple[int, int], field: ReceptiveField, sigma: float) -> torch.Tensor:
    """(B, u, v) → (B, H, W): each output pixel spreads its score as a Gaussian over its receptive
    field (Alg. 1), i.e. a transposed convolution with the fixed kernel and stride = field.stride."""
    kernel = gaussian_kernel(field.size, sigma).to(scores)
    up = F.conv_transpose2d(scores[:, None], kernel[None, None], stride=field.stride)
    top, left = (round((field.size - 1) / 2 - offset) for offset in field.offset)  # index of input pixel 0
    height, width = size
    up = F.pad(up, (-left, width + left - up.shape[-1], -top, height + top - up.shape[-2]))
    return up[:, 0]


# --- synthetic anomalies ----------------------------------------------------------------------------


def confetti(
    images: torch.Tensor,
    blobs: float,
    blob_size: tuple[int, int],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Confetti noise (the paper's MVTec outlier exposure) on images in [0, 1], (B, 3, H, W).

    Per image 1 + Poisson(blobs - 1) squares, side uniform in ``blob_size`` px (at 224 px; scaled to
    the image), rotated by up to 45 degrees, 60 % in a random colour and 40 % white, smoothed with a
    Gaussian (sigma 5 px at 224 px) and added to the image; an image that adding leaves (almost)
    unchanged (already white there) gets the noise subtracted instead. Returns (corrupted, masks (B, H, W)).
    """
    b, _, h, w = images.shape
    scale = min(h, w) / 224
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    counts = 1 + torch.poisson(torch.full((b,), max(blobs - 1.0, 0.0)), generator=generator).long()
    noise = torch.zeros(b, 3, h, w)
    for n in range(b):
        for _ in range(int(counts[n])):
            lo, hi = blob_size
            half = scale * (lo + (hi - lo) * torch.rand((), generator=generator)) / 2
            cy, cx = h * torch.rand((), generator=generator), w * torch.rand((), generator=generator)
            angle = math.radians(90) * (torch.rand((), generator=generator) - 0.5)
            dy, dx = ys - cy, xs - cx
            u, v = dy * angle.cos() + dx * angle.sin(), dx * angle.cos() - dy * angle.sin()
            inside = (u.abs() <= half) & (v.abs() <= half)
            coloured = torch.rand((), generator=generator) < 0.6
            colour = torch.rand(3, generator=generator) if coloured else torch.ones(3)
            noise[n] += colour[:, None, None] * inside
    sigma = 5 * scale
    noise = gaussian_blur(noise, kernel_size=2 * round(2.5 * sigma) + 1, sigma=sigma)
    images = images.cpu()
    added, removed = (images + noise).clamp(0, 1), (images - noise).clamp(0, 1)
    change_added = (added - images).abs().flatten(1).mean(1)
    change_removed = (removed - images).abs().flatten(1).mean(1)
    invert = (change_added < 1e-4) & (change_removed > change_added)
    corrupted = torch.where(invert[:, None, None, None], removed, added)
    masks = (corrupted - images).abs().amax(1) > 1 / 255
    return corrupted, masks


@register("fcdd")
class FCDD(AnomalyDetector):
    param_constraints = {
        "epochs": "[0, inf)", "train_batch_size": "[1, inf)", "optimizer": list(OPTIMIZERS), "lr": "(0, inf)",
        "momentum": "[0, 1)", "lr_decay": "(0, 1]",
        "weight_decay": "[0, inf)", "val_fraction": "[0, 1)", "patience": "[1, inf)",
        "confetti_per_image": "[0, inf)", "confetti_blobs": "(0, inf)", "sigma": "[0, inf)", "seed": "[0, inf)",
    }
    fitted_attributes = ("head",)
    learns_from_anomalies = True
    deviations = (
        "frozen backbone + 1x1 head (authors: VGG11-BN, its last two 3x3 conv+BN layers trained; CPU budget)",
        "offline confetti pool (authors: online)",
        "no LCN / augmentation",
    )

    def __init__(
        self,
        backbone: Backbone,
        layers: list[str],
        head_channels: list[int] | None = None,
        epochs: int = 200,
        train_batch_size: int = 64,
        optimizer: str = "adam",
        lr: float = 1e-3,
        momentum: float = 0.9,
        lr_decay: float = 0.985,
        weight_decay: float = 1e-4,
        val_fraction: float = 0.0,
        patience: int = 3,
        confetti_per_image: int = 2,
        confetti_blobs: float = 2.0,
        confetti_size: tuple[int, int] = (8, 54),
        pixel_loss: bool = False,
        sigma: float = 12.0,
        image_score: str = "mean",
        seed: int = 0,
        device: str = "cpu",
    ):
        if len(layers) != 1:
            raise ConfigError(f"method.layers: FCDD takes exactly one (stride-8) stage, got {list(layers)}")
        super().__init__(backbone, layers, device)
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"method.optimizer: {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if image_score not in IMAGE_SCORES:
            raise ConfigError(f"method.image_score: {image_score!r} is not one of {', '.join(IMAGE_SCORES)}")
        if confetti_per_image < 0 or epochs < 1 or train_batch_size < 1:
            raise ConfigError("method.confetti_per_image must be >= 0, method.epochs and method.train_batch_size >= 1")
        if len(confetti_size) != 2 or not 0 < confetti_size[0] <= confetti_size[1]:
            raise ConfigError(f"method.confetti_size: expected [min, max] blob side in px, got {list(confetti_size)}")
        self.layer = self.layers[0]
        self.head_channels = list(head_channels or [])
        self.epochs, self.train_batch_size, self.lr, self.weight_decay = epochs, train_batch_size, lr, weight_decay
        self.momentum, self.lr_decay, self.val_fraction, self.patience = momentum, lr_decay, val_fraction, patience
        self.optimizer = optimizer
        if optimizer == "adam":
            self.deviations = (*self.deviations, "Adam (authors' MVTec default SGD leaves the head's training loss high)")
        self.confetti_per_image, self.confetti_blobs = confetti_per_image, confetti_blobs
        self.confetti_size = (int(confetti_size[0]), int(confetti_size[1]))
        self.pixel_loss, self.sigma, self.image_score, self.seed = pixel_loss, sigma, image_score, seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = self._build_head(backbone.channels[self.layer]).to(self.device)
        self._fields: dict[tuple[int, int], ReceptiveField] = {}
        self._mean, self._std = (torch.tensor(v).view(1, 3, 1, 1) for v in (backbone.mean, backbone.std))

    def _build_head(self, channels: int) -> nn.Sequential:
        """1x1 convolutions to one channel (ReLU between hidden layers)."""
        layers: list[nn.Module] = []
        for width in self.head_channels:
            layers += [nn.Conv2d(channels, width, 1), nn.ReLU(inplace=True)]
            channels = width
        return nn.Sequential(*layers, nn.Conv2d(channels, 1, 1))

    def field(self, size: tuple[int, int]) -> ReceptiveField:
        """Receptive field of the stage for input images of ``size`` (measured once per size)."""
        if size not in self._fields:
            self._fields[size] = measure_receptive_field(self.backbone, self.layer, size)
        return self._fields[size]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, u, v) frozen stage features."""
        return self.layer_maps(images)[0]

    def heatmap(self, features: torch.Tensor) -> torch.Tensor:
        """(B, u, v) A(X) from stage features."""
        return pseudo_huber(self.head(features))[:, 0]

    def _synthetic(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Confetti anomalies of normalised images, returned normalised, with their masks."""
        raw = images.cpu() * self._std + self._mean
        corrupted, masks = confetti(raw, self.confetti_blobs, self.confetti_size, generator)
        return (corrupted - self._mean) / self._std, masks

    @torch.no_grad()
    def _training_set(self, batches: Iterable[dict], generator: torch.Generator) -> dict:
        """Features of the normal images, of their synthetic anomalies and of labelled anomalies
        (batch items with label 1; their ``mask`` is the ground-truth map), with the anomalies' masks."""
        normal, anomalous, masks, origin = [], [], [], []
        labelled, size, n_normal = 0, None, 0
        for batch in tqdm(batches, desc="fcdd: features", leave=False):
            images = batch["image"]
            size = tuple(images.shape[-2:])
            labels = torch.as_tensor(batch.get("label", torch.zeros(len(images)))).bool()
            if labels.any():
                if "mask" not in batch:
                    raise DataError("fcdd: a training batch has anomalies (label 1) but no 'mask'")
                anomalous.append(self.features(images[labels]))
                masks.append(torch.as_tensor(batch["mask"])[labels].bool())
                origin.append(torch.full((int(labels.sum()),), -1))  # labelled anomalies always train
                labelled += int(labels.sum())
            good = images[~labels]
            if len(good):
                normal.append(self.features(good))
                for _ in range(self.confetti_per_image):
                    corrupted, confetti_masks = self._synthetic(good, generator)
                    anomalous.append(self.features(corrupted))
                    masks.append(confetti_masks)
                    origin.append(torch.arange(n_normal, n_normal + len(good)))  # the normal image it was made from
                n_normal += len(good)
        if not normal:
            raise DataError("fcdd: no normal training images")
        if not anomalous:
            raise ConfigError("fcdd: the HSC loss needs anomalies: set method.confetti_per_image > 0 or pass labelled anomalies")
        return {
            "normal": torch.cat(normal),
            "anomalous": torch.cat(anomalous),
            "masks": torch.cat(masks).to(self.device),
            "origin": torch.cat(origin),
            "labelled": labelled,
            "size": size,
        }

    def _loss(self, features: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        a = self.heatmap(features)
        if self.pixel_loss:
            return pixel_hsc_loss(receptive_upsample(a, size, self.field(size), self.sigma), masks)
        return hsc_loss(a, labels)

    def _fit(self, batches: Iterable[dict]) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        start = time.perf_counter()
        data = self._training_set(batches, generator)
        extracted = time.perf_counter()
        training = self._train(data)
        field = self.field(data["size"])
        self.fit_info = {
            "normal_images": len(data["normal"]),
            "synthetic_anomalies": len(data["anomalous"]) - data["labelled"],
            "labelled_anomalies": data["labelled"],
            "final_loss": training["history"][-1].get("train_loss") if training["history"] else None,
            "feature_seconds": extracted - start,
            "receptive_field": field.size,
            "receptive_stride": field.stride,
            "receptive_offset": field.offset,
            "head_parameters": self.memory_bank_shape[0],
            **training,
        }

    def _train(self, data: dict) -> dict:
        """Adam or SGD (Nesterov) on the head: each step takes a batch of normal features and as many anomalies,
        drawn with replacement from the pool (only those made from the step's side of the validation split)."""
        normal, anomalous, anomaly_masks, size = data["normal"], data["anomalous"], data["masks"], data["size"]
        train, val = holdout(len(normal), self.val_fraction, self.seed)
        in_val = torch.zeros(len(normal) + 1, dtype=torch.bool)  # last slot: origin -1 (labelled anomalies train)
        in_val[val] = True
        pools = {False: torch.where(~in_val[data["origin"]])[0], True: torch.where(in_val[data["origin"]])[0]}
        if len(val) and not len(pools[True]):
            raise ConfigError("method.val_fraction: the validation images have no synthetic anomalies (method.confetti_per_image = 0)")
        if self.optimizer == "sgd":
            optimizer = torch.optim.SGD(self.head.parameters(), lr=self.lr, momentum=self.momentum, nesterov=self.momentum > 0,
                                        weight_decay=self.weight_decay)
        else:
            optimizer = torch.optim.Adam(self.head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: self.lr_decay**epoch)

        def loss_of(chunk: torch.Tensor, validation: bool, generator: torch.Generator | None) -> torch.Tensor:
            pool = pools[validation]
            pick = pool[torch.randint(len(pool), (len(chunk),), generator=generator)]
            features = torch.cat([normal[chunk], anomalous[pick]])
            labels = torch.cat([torch.zeros(len(chunk)), torch.ones(len(chunk))]).to(self.device)
            masks = torch.cat([torch.zeros_like(anomaly_masks[pick]), anomaly_masks[pick]])
            return self._loss(features, labels, masks, size)

        def step(chunk: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
            loss = loss_of(chunk, False, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return {"loss": loss.item()}

        def val_loss(chunk: torch.Tensor) -> float:  # the same anomaly draws every epoch
            return loss_of(chunk, True, torch.Generator().manual_seed(self.seed + 1 + int(chunk[0]))).item()

        loop = TrainingLoop(self.epochs, self.train_batch_size, self.seed, self.patience, "fcdd: train")
        return loop.run(self.head, train, step, val, val_loss, end_of_epoch=lambda _: schedule.step())

    @torch.no_grad()
    def _predict(self, images: torch.Tensor) -> Prediction:
        size = tuple(images.shape[-2:])
        a = self.heatmap(self.features(images))
        maps = receptive_upsample(a, size, self.field(size), self.sigma)
        scores = a.flatten(1).mean(1) if self.image_score == "mean" else a.flatten(1).amax(1)  # of A(X), not of the map
        return Prediction(scores.cpu().numpy().astype(np.float64), maps.cpu().numpy())

    @property
    def memory_bank_shape(self) -> tuple[int, ...]:
        return (sum(p.numel() for p in self.head.parameters()),)

    @property
    def memory_bank_bytes(self) -> int:
        """Bytes of the trained 1x1 head (parameters): all FCDD fits; the backbone is shared and frozen."""
        return nbytes(*self.head.state_dict().values())
