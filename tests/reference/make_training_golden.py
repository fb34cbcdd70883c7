"""Generate tests/reference/golden_training.npz: what one training step, a bank initialisation and the training
losses of CFA, ReConPatch and FCDD give on small fixed tensors. Run by hand, not by pytest; never imports adbench.

The references are literal transcriptions, written apart from adbench, in float64:
- CFA: the official code, sungwool/CFA_for_anomaly_localization @0708086: CoordConv2d / AddCoords
  (utils/coordconv.py:5-61), DSVDD._soft_boundary with its 1/nu = 1000 factor (utils/cfa.py:62-78), the mean
  descriptor map of _init_centroid (utils/cfa.py:80-86), its K-means call (utils/cfa.py:32) and the AdamW of
  trainer_cfa.py:107-110, one step (trainer_cfa.py:122-127);
- ReConPatch (no official code): the paper's equations, pairwise similarity exp(-||z_i - z_j||^2 / sigma),
  contextual similarity (k-NN overlap, query expansion over N_{k/2}, symmetrised), w = alpha w_p + (1 - alpha) w_c^T,
  the relaxed contrastive loss with mean-normalised distances, and the EMA update of the target network,
  written with Python loops and sets; N_k(i) includes i (STML's top-k of W_P, code/loss.py:61);
- FCDD: the authors' code, liznerski/fcdd @4fa8502: the pseudo-Huber + HSC loss with labels
  (python/fcdd/training/fcdd.py:17-35), the ground-truth-map loss (fcdd.py:37-52), gkern
  (python/fcdd/datasets/noise.py:27-42) and receptive_upsample (python/fcdd/models/bases.py:42-80).

    /work/main/.venv/bin/python tests/reference/make_training_golden.py

writes tests/reference/golden_training.npz (a few tens of kB), read by tests/reference/test_parity.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy
import sklearn
import torch
import torch.nn.functional as F
from scipy.signal.windows import gaussian
from sklearn.cluster import KMeans

OUT = Path(__file__).with_name("golden_training.npz")
torch.set_default_dtype(torch.float64)


# --- CFA, official code ---------------------------------------------------------------------------------------
def add_coords(x: torch.Tensor) -> torch.Tensor:
    """AddCoords (utils/coordconv.py:27-55): row channel (xx, over dim_y), then column channel (yy), in [-1, 1]."""
    b, _, dim_y, dim_x = x.shape
    xx = (torch.arange(dim_y, dtype=torch.float64)[None, None, :, None] @ torch.ones(1, 1, 1, dim_x)) / (dim_y - 1) * 2 - 1
    yy = (torch.arange(dim_x, dtype=torch.float64)[None, None, :, None] @ torch.ones(1, 1, 1, dim_y)).permute(0, 1, 3, 2) / (dim_x - 1) * 2 - 1
    return torch.cat([x, xx.repeat(b, 1, 1, 1), yy.repeat(b, 1, 1, 1)], dim=1)


def soft_boundary(phi_p: torch.Tensor, centres: torch.Tensor, r: torch.Tensor, k: int, j: int, alpha: float, nu: float) -> torch.Tensor:
    """DSVDD._soft_boundary (utils/cfa.py:62-78); phi_p (b, hw, c), centres (c, |C|) as the official self.C."""
    features = torch.sum(torch.pow(phi_p, 2), 2, keepdim=True)
    centers = torch.sum(torch.pow(centres, 2), 0, keepdim=True)
    f_c = 2 * torch.matmul(phi_p, centres)
    dist = features + centers - f_c
    dist = dist.topk(k + j, largest=False).values
    score = dist[:, :, :k] - r**2
    l_att = (1 / nu) * torch.mean(torch.max(torch.zeros_like(score), score))
    score = r**2 - dist[:, :, j:]
    l_rep = (1 / nu) * torch.mean(torch.max(torch.zeros_like(score), score - alpha))
    return l_att + l_rep


def cfa(g: dict, rng: np.random.Generator) -> None:
    k = j = 3
    alpha, nu = 0.1, 1e-3
    p = torch.from_numpy(rng.standard_normal((4, 6, 5, 5)))  # one batch of 4 cached patch-feature maps (D = 6)
    weight = torch.from_numpy(rng.standard_normal((12, 8, 1, 1)) * 0.5)  # 1x1 CoordConv: D + 2 -> D' = 12
    bias = torch.from_numpy(rng.standard_normal(12) * 0.1)
    with torch.no_grad():
        phi0 = F.conv2d(add_coords(p), weight, bias)
    flat0 = phi0.permute(0, 2, 3, 1).reshape(-1, 12)
    bank = flat0[rng.choice(len(flat0), 20, replace=False)] + torch.from_numpy(rng.standard_normal((20, 12)) * 0.3)
    dist0 = torch.cdist(flat0, bank).pow(2).topk(k + j, largest=False).values
    # r^2 between the near and the hard-negative distances, so both hinges act, and interpolated between two of the
    # 600 distances, equal to none (at a tie, the official torch.max splits the gradient in halves, relu gives 0)
    radius = float(np.sqrt(np.quantile(dist0.numpy(), 0.45)))

    # one optimisation step, as trainer_cfa.py:122-127 with the optimiser of :107-110
    w = weight.clone().requires_grad_(True)
    b = bias.clone().requires_grad_(True)
    r = torch.tensor([radius], requires_grad=True)
    optimizer = torch.optim.AdamW([w, b, r], lr=1e-3, weight_decay=5e-4, amsgrad=True)
    optimizer.zero_grad()
    phi_p = F.conv2d(add_coords(p), w, b).permute(0, 2, 3, 1).reshape(4, 25, 12)  # rearrange 'b c h w -> b (h w) c'
    loss = soft_boundary(phi_p, bank.T, r, k, j, alpha, nu)
    loss.backward()
    g["cfa_step_features"], g["cfa_step_weight"], g["cfa_step_bias"] = p.numpy(), weight.numpy(), bias.numpy()
    g["cfa_step_bank"], g["cfa_step_radius0"] = bank.numpy(), np.array(radius)
    g["cfa_step_loss_x1000"] = np.array(loss.item())
    g["cfa_step_grad_weight_x1000"], g["cfa_step_grad_bias_x1000"] = w.grad.numpy().copy(), b.grad.numpy().copy()
    g["cfa_step_grad_radius_x1000"] = r.grad.numpy().copy()
    optimizer.step()
    g["cfa_step_radius1"], g["cfa_step_weight1"] = r.detach().numpy().copy(), w.detach().numpy().copy()
    near = dist0[:, :k] > radius**2
    far = radius**2 - dist0[:, k:] - alpha > 0
    assert near.any() and far.any(), "both hinges must act on the golden batch"
    g["cfa_step_active"] = np.array([near.double().mean().item(), far.double().mean().item()])

    # bank initialisation (official default): the mean phi_0 map, _init_centroid over batches of 4 (utils/cfa.py:80-86)
    maps = torch.from_numpy(rng.standard_normal((8, 6, 5, 5)))
    centres = 0
    for i, batch in enumerate(maps.split(4)):
        phi = F.conv2d(add_coords(batch), weight, bias)
        centres = ((centres * i) + torch.mean(phi, dim=0, keepdim=True).detach()) / (i + 1)
    g["cfa_init_features"], g["cfa_init_bank"] = maps.numpy(), centres.permute(0, 2, 3, 1).reshape(-1, 12).numpy()

    # K-means when gamma_c < 1 (utils/cfa.py:32): five tight, well separated blobs, so every start finds their means
    blobs = rng.standard_normal((5, 4)) * 10
    points = np.concatenate([blob + rng.standard_normal((8, 4)) * 0.1 for blob in blobs])
    found = KMeans(n_clusters=5, max_iter=3000, n_init=10).fit(points).cluster_centers_
    g["cfa_kmeans_points"], g["cfa_kmeans_centres"] = points, found[np.lexsort(found.T[::-1])]


# --- ReConPatch, the paper's equations ------------------------------------------------------------------------
def reconpatch(g: dict, rng: np.random.Generator) -> None:
    n, k, alpha, sigma, margin, momentum = 12, 5, 0.5, 4.0, 1.0, 0.99
    z_bar = rng.standard_normal((n, 3))  # EMA-network embeddings (pseudo-labels)
    z = rng.standard_normal((n, 3))  # trained-network embeddings
    sq = np.array([[np.sum((z_bar[a] - z_bar[b]) ** 2) for b in range(n)] for a in range(n)])
    pairwise = np.exp(-sq / sigma)
    hood = [list(np.argsort(sq[i], kind="stable")[:k]) for i in range(n)]  # N_k(i), i itself first
    assert all(h[0] == i for i, h in enumerate(hood))
    tilde = np.zeros((n, n))
    for i in range(n):
        for jj in hood[i]:
            tilde[i, jj] = len(set(hood[i]) & set(hood[jj])) / len(hood[i])
    half = k // 2  # |N_{k/2}(i)| = 2 for k = 5 (STML: round(k / 2) = 2 too)
    hat = np.array([[np.mean([tilde[l, jj] for l in hood[i][:half]]) for jj in range(n)] for i in range(n)])
    contextual = (hat + hat.T) / 2
    w = alpha * pairwise + (1 - alpha) * contextual.T
    dist = np.array([[np.linalg.norm(z[a] - z[b]) for b in range(n)] for a in range(n)])
    loss = 0.0
    for i in range(n):
        mean = np.mean([dist[i, m] for m in range(n)])
        for jj in range(n):
            delta = dist[i, jj] / mean
            loss += w[i, jj] * delta**2 + (1 - w[i, jj]) * max(margin - delta, 0.0) ** 2
    g["rc_z_bar"], g["rc_z"], g["rc_params"] = z_bar, z, np.array([k, alpha, sigma, margin, momentum])
    g["rc_pairwise"], g["rc_contextual"], g["rc_w"], g["rc_loss"] = pairwise, contextual, w, np.array(loss / n)
    theta_bar, theta = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 4, 3))  # [weight (4, 3), bias-like (4, 3)]
    g["ema_theta_bar"], g["ema_theta"] = theta_bar, theta
    g["ema_updated"] = momentum * theta_bar + (1 - momentum) * theta


# --- FCDD, the authors' code ----------------------------------------------------------------------------------
def gkern(k: int, std: float) -> np.ndarray:
    """python/fcdd/datasets/noise.py:27-42 (odd k); scipy's signal.gaussian now lives in signal.windows."""
    assert k % 2 == 1
    gkern1d = gaussian(k, std=std).reshape(k, 1)
    return np.outer(gkern1d, gkern1d)


def receptive_upsample(pixels: torch.Tensor, r: int, j: int, s: int, side: int, std: float) -> torch.Tensor:
    """python/fcdd/models/bases.py:58-80, square images of ``side`` px, odd r."""
    pixels = pixels.squeeze(1)
    gaus = torch.from_numpy(gkern(r, std))
    pad = (r - 1) // 2
    res = F.conv_transpose2d(pixels.unsqueeze(1), gaus.unsqueeze(0).unsqueeze(0), stride=j, padding=0,
                             output_padding=side - (pixels.shape[-1] - 1) * j - 1)
    return res[:, :, pad - s:-pad - s, pad - s:-pad - s]


def fcdd(g: dict, rng: np.random.Generator) -> None:
    r, j, s, side, std = 67, 8, 7, 224, 12.0  # EfficientNet-Lite0 blocks.2 at 224 px, the authors' MVTec gauss_std
    outs = torch.from_numpy(rng.standard_normal((6, 1, 28, 28)) * 0.7)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    loss = (outs**2 + 1).sqrt() - 1  # fcdd.py:18-19
    per_sample = loss.reshape(6, -1).mean(-1)  # __supervised_loss, fcdd.py:26-35
    anom = -(((1 - (-per_sample[labels == 1]).exp()) + 1e-31).log())
    supervised = torch.cat([per_sample[labels == 0], anom]).mean()
    gtmaps = torch.zeros(6, 1, side, side)
    gtmaps[3, :, 40:90, 100:160] = gtmaps[4, :, 150:200, 10:60] = gtmaps[5, :, 0:30, 190:224] = 1
    up = receptive_upsample(loss, r, j, s, side, std)  # __gt_loss, fcdd.py:37-52
    norm = (up * (1 - gtmaps)).view(6, -1).mean(-1)
    has = (gtmaps == 1).view(6, -1).sum(-1) > 0
    anomalous = torch.zeros_like(norm)
    a = (up * gtmaps)[has]
    anomalous[has] = -(((1 - (-a.view(a.size(0), -1).mean(-1)).exp()) + 1e-31).log())
    g["fcdd_outs"], g["fcdd_labels"], g["fcdd_gtmaps"] = outs.numpy(), labels.numpy(), gtmaps[:, 0].numpy().astype(bool)
    g["fcdd_field"] = np.array([r, j, s, side, std])
    g["fcdd_hsc_loss"], g["fcdd_gt_loss"] = np.array(supervised.item()), np.array((norm + anomalous).mean().item())
    g["fcdd_upsampled_1_4"] = up[:, 0, 1::4, 1::4].numpy().astype(np.float32)  # every 4th pixel (the gt loss covers all)


def main() -> None:
    g: dict[str, np.ndarray] = {"versions": np.array(f"torch {torch.__version__}, numpy {np.__version__}, scipy {scipy.__version__}, "
                                                     f"scikit-learn {sklearn.__version__}")}
    rng = np.random.default_rng(25)
    cfa(g, rng)
    reconpatch(g, rng)
    fcdd(g, rng)
    np.savez_compressed(OUT, **g)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.1f} kB): {', '.join(sorted(g))}")
    print(f"CFA: loss x1000 {float(g['cfa_step_loss_x1000']):.6f}, L_att / L_rep active on {g['cfa_step_active'].round(2)}; "
          f"ReConPatch loss {float(g['rc_loss']):.6f}; FCDD HSC {float(g['fcdd_hsc_loss']):.6f}, gt {float(g['fcdd_gt_loss']):.6f}")


if __name__ == "__main__":
    main()
