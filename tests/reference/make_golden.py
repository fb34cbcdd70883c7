"""Generate tests/reference/golden.npz: reference outputs on small fixed inputs. Run by hand, not by pytest.

The references, never adbench itself:
- anomalib 2.7 (the ``compare`` extra): PatchCore's pooled embedding, k-center-greedy coreset picks,
  nearest-neighbour patch scores and Eq. 7 image scores; PaDiM's embedding, Gaussian and Mahalanobis
  map; CFA's descriptor, loss and scores; the bilinear + Gaussian (sigma 4) anomaly map;
- transcriptions of published code where anomalib has none: patchcore-inspection's projection to the
  target dimension (PatchMaker + Preprocessing/MeanMapper + Aggregator), and the MVTec AD evaluation
  script's PRO curve and its normalised area up to FPR 0.3 (the definition of AUPRO).

Install anomalib into its own virtual environment (never adbench's), then run this file with it:

    python3 -m venv /tmp/anomalib-venv
    /tmp/anomalib-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 anomalib==2.7.0
    /tmp/anomalib-venv/bin/python tests/reference/make_golden.py

It overwrites tests/reference/golden.npz (a few tens of kB); tests/reference/test_parity.py reads it
without anomalib installed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

OUT = Path(__file__).with_name("golden.npz")


def adbench_style_start(n: int, seed: int) -> int:
    """The first coreset pick adbench draws for ``seed``; anomalib draws it from the global RNG seeded alike."""
    return int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))


def sorted_subset(channels: int, dim: int, seed: int) -> torch.Tensor:
    """The channel subset adbench's PaDiM keeps for ``seed`` (anomalib draws its own: it is an input here)."""
    return torch.randperm(channels, generator=torch.Generator().manual_seed(seed))[:dim].sort().values


# --- patchcore-inspection (amazon-science/patchcore-inspection, src/patchcore/{patchcore,common}.py) ---------
def patchcore_inspection_embedding(layer_maps: list[torch.Tensor], target_dim: int, patch_size: int = 3) -> torch.Tensor:
    """Transcription of PatchCore._embed: unfold p x p patches (zero padding, stride 1), bring deeper layers'
    patch grids to the first one bilinearly, MeanMapper each layer's flattened C x p x p patch to
    ``target_dim`` (pretrain_embed_dimension), stack, Aggregator to ``target_dim``. Rows: (B * h * w, target_dim)."""
    padding = (patch_size - 1) // 2
    patches = []
    for m in layer_maps:
        b, c, h, w = m.shape
        unfolded = F.unfold(m, kernel_size=patch_size, stride=1, padding=padding)  # (B, C*p*p, h*w)
        patches.append(unfolded.reshape(b, c, patch_size, patch_size, h, w).permute(0, 4, 5, 1, 2, 3))  # (B, h, w, C, p, p)
    ref_h, ref_w = patches[0].shape[1:3]
    for i in range(1, len(patches)):
        x = patches[i]
        b, h, w = x.shape[:3]
        x = x.permute(0, 3, 4, 5, 1, 2).reshape(-1, h, w)
        x = F.interpolate(x.unsqueeze(1), size=(ref_h, ref_w), mode="bilinear", align_corners=False).squeeze(1)
        x = x.reshape(b, *patches[i].shape[3:], ref_h, ref_w).permute(0, 4, 5, 1, 2, 3)
        patches[i] = x
    flat = [x.reshape(-1, *x.shape[-3:]) for x in patches]  # (B*h*w, C, p, p)
    mapped = [F.adaptive_avg_pool1d(x.reshape(len(x), 1, -1), target_dim).squeeze(1) for x in flat]  # MeanMapper
    stacked = torch.stack(mapped, dim=1)  # (N, L, target_dim)
    return F.adaptive_avg_pool1d(stacked.reshape(len(stacked), 1, -1), target_dim).reshape(len(stacked), -1)  # Aggregator


# --- the MVTec AD evaluation script's PRO (pro_curve_util.compute_pro, generic_util.trapezoid) ---------------
def mvtec_pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FPR and PRO at every distinct threshold, highest first; 8-connected regions, (0, 0) and (1, 1) appended."""
    structure = np.ones((3, 3), dtype=int)
    fp_changes = np.zeros(maps.shape, dtype=np.uint32)
    pro_changes = np.zeros(maps.shape, dtype=np.float64)
    n_ok, n_regions = 0, 0
    for i, mask in enumerate(masks):
        labeled, n = ndimage.label(mask, structure)
        n_regions += n
        ok = labeled == 0
        n_ok += ok.sum()
        fp_changes[i, ok] = 1
        for k in range(n):
            region = labeled == k + 1
            pro_changes[i, region] = 1.0 / region.sum()
    scores = maps.ravel()
    order = np.argsort(scores, kind="stable")[::-1]
    scores, fp, pro = scores[order], fp_changes.ravel()[order], pro_changes.ravel()[order]
    fprs = np.cumsum(fp).astype(np.float64) / n_ok
    pros = np.cumsum(pro) / n_regions
    keep = np.append(np.diff(scores) != 0, True)
    fprs, pros = np.clip(fprs[keep], None, 1.0), np.clip(pros[keep], None, 1.0)
    return np.concatenate(([0.0], fprs, [1.0])), np.concatenate(([0.0], pros, [1.0]))


def trapezoid_until(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Area under y(x) for x in [0, x_max], y interpolated linearly at x_max (generic_util.trapezoid)."""
    ins = int(np.searchsorted(x, x_max, side="right"))  # bisect: first index with x > x_max
    correction = 0.0
    if 0 < ins < len(x):
        y_at = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_at + y[ins - 1]) * (x_max - x[ins - 1])
    xs, ys = x[:ins], y[:ins]
    return float(np.sum(0.5 * (ys[1:] + ys[:-1]) * (xs[1:] - xs[:-1])) + correction)


def main() -> None:
    import anomalib
    from anomalib.metrics.aupro import _AUPRO
    from anomalib.models.components import KCenterGreedy
    from anomalib.models.image.cfa.anomaly_map import AnomalyMapGenerator as CfaMap
    from anomalib.models.image.cfa.loss import CfaLoss
    from anomalib.models.image.cfa.torch_model import CoordConv2d, Descriptor
    from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator as PadimMap
    from anomalib.models.image.padim.torch_model import PadimModel
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    g: dict[str, np.ndarray] = {"versions": np.array(f"anomalib {anomalib.__version__}, torch {torch.__version__}")}
    rng = np.random.default_rng(15)

    def tensor(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.from_numpy((rng.standard_normal(shape) * scale).astype(np.float32))

    # 1. PatchCore features: anomalib's pooled concatenation; patchcore-inspection's projection to 8 dims
    #    (channels 8 and 16: multiples of the target, where both formulations coincide).
    l2, l3 = tensor(2, 8, 6, 6), tensor(2, 16, 3, 3)
    patchcore = PatchcoreModel(layers=["layer2", "layer3"], backbone="resnet18", pre_trained=False)
    pooled = {"layer2": patchcore.feature_pooler(l2), "layer3": patchcore.feature_pooler(l3)}
    g["pc_layer2"], g["pc_layer3"] = l2.numpy(), l3.numpy()
    g["pc_concat"] = patchcore.generate_embedding(pooled).numpy()  # (2, 24, 6, 6)
    g["pc_projected"] = patchcore_inspection_embedding([l2, l3], 8).numpy()  # (2*6*6, 8)

    # 2. coreset: k-center greedy on 3-D embeddings (anomalib projects only 2-D ones), start drawn with seed 4
    points = tensor(200, 1, 6)
    torch.manual_seed(4)
    picks = KCenterGreedy(points, sampling_ratio=0.1).select_coreset_idxs()
    assert picks[0] == adbench_style_start(200, 4)
    g["coreset_points"], g["coreset_picks"], g["coreset_seed"] = points[:, 0].numpy(), np.array(picks), np.array(4)

    # 3. patch scores (1-NN Euclidean) and Eq. 7 re-weighted image scores, b = 9
    bank, embedding = tensor(40, 8), tensor(2, 8, 5, 5)
    patchcore.memory_bank = bank
    patchcore.num_neighbors = 9
    flat = patchcore.reshape_embedding(embedding)
    scores, locations = patchcore.nearest_neighbors(flat, n_neighbors=1)
    scores, locations = scores.reshape(2, -1), locations.reshape(2, -1)
    g["ps_bank"], g["ps_embedding"] = bank.numpy(), embedding.numpy()
    g["ps_patch_scores"] = scores.reshape(2, 5, 5).numpy()
    g["ps_image_scores_eq7"] = patchcore.compute_anomaly_score(scores, locations, flat).numpy()

    # 4. anomaly map: bilinear upsampling + Gaussian blur sigma 4 (anomalib's PaDiM / CFA map generators)
    patch_scores = tensor(2, 1, 7, 7).abs()
    generator = PadimMap(sigma=4)
    g["map_patch_scores"] = patch_scores[:, 0].numpy()
    g["map_blurred"] = generator.smooth_anomaly_map(generator.up_sample(patch_scores, (56, 56)))[:, 0].numpy()

    # 5. PaDiM: nearest-upsampled concatenation, channel subset, per-position Gaussian, Mahalanobis map
    train = [tensor(12, 4, 8, 8), tensor(12, 6, 4, 4), tensor(12, 8, 2, 2)]
    test = [tensor(3, 4, 8, 8, scale=1.5), tensor(3, 6, 4, 4, scale=1.5), tensor(3, 8, 2, 2, scale=1.5)]
    padim = PadimModel(backbone="resnet18", layers=["layer1", "layer2", "layer3"], pre_trained=False, n_features=10)
    padim.idx = sorted_subset(18, 10, seed=3)
    names = ["layer1", "layer2", "layer3"]
    train_embedding = padim.generate_embedding(dict(zip(names, train)))
    mean, inv_covariance = padim.gaussian.fit(train_embedding)
    vectors = train_embedding.reshape(12, 10, -1)
    covariance = torch.stack([padim.gaussian._cov(vectors[:, :, i], rowvar=False) + 0.01 * torch.eye(10) for i in range(64)])
    test_embedding = padim.generate_embedding(dict(zip(names, test)))
    for i, m in enumerate(train):
        g[f"padim_train{i}"] = m.numpy()
    for i, m in enumerate(test):
        g[f"padim_test{i}"] = m.numpy()
    g["padim_index"] = padim.idx.numpy()
    g["padim_embedding"] = test_embedding.numpy()
    g["padim_mean"], g["padim_covariance"] = mean.numpy(), covariance.numpy()  # (10, 64), (64, 10, 10)
    g["padim_distance"] = PadimMap.compute_distance(test_embedding, [mean, inv_covariance])[:, 0].numpy()
    g["padim_map"] = padim.anomaly_map_generator(embedding=test_embedding, mean=mean, inv_covariance=inv_covariance,
                                                 image_size=(32, 32))[:, 0].numpy()

    # 6. CFA: descriptor (3x3 pool / 9, layers divided by their channel count, bilinear, CoordConv to 2 D),
    #    squared distances to a bank, L_att + L_rep (x 1000, K = J = 3, alpha = 0.1) and the softmin scores
    maps = [tensor(2, 4, 8, 8), tensor(2, 4, 4, 4), tensor(2, 6, 2, 2)]
    descriptor = Descriptor(gamma_d=1, backbone="efficientnet_b5")  # its EfficientNet path: features / C, width 2 D
    descriptor.layer = CoordConv2d(in_channels=14, out_channels=28, kernel_size=1)
    with torch.no_grad():
        descriptor.layer.conv2d.weight.copy_(tensor(28, 16, 1, 1, scale=3.0))
        descriptor.layer.conv2d.bias.copy_(tensor(28, scale=0.1))
        phi = descriptor(maps)  # (2, 28, 8, 8)
    centres = phi.permute(0, 2, 3, 1).reshape(-1, 28)[torch.from_numpy(rng.choice(128, 30, replace=False))]
    cfa_bank = (centres + tensor(30, 28, scale=0.05)).T.contiguous()  # anomalib keeps (D', |C|)
    cfa = type("Cfa", (), {})()  # compute_distance needs only the bank
    cfa.memory_bank = cfa_bank
    from anomalib.models.image.cfa.torch_model import CfaModel

    distance = CfaModel.compute_distance(cfa, phi)  # (2, 64, 30) squared
    nearest6 = distance.topk(6, largest=False).values
    radius = float(nearest6.median().sqrt())  # both hinges active on part of the patches
    loss = CfaLoss(num_nearest_neighbors=3, num_hard_negative_features=3, radius=radius)(distance)
    cfa_map = CfaMap(num_nearest_neighbors=3, sigma=4)
    for i, m in enumerate(maps):
        g[f"cfa_map{i}"] = m.numpy()
    g["cfa_weight"] = descriptor.layer.conv2d.weight.detach().numpy()
    g["cfa_bias"] = descriptor.layer.conv2d.bias.detach().numpy()
    g["cfa_phi"], g["cfa_bank"], g["cfa_radius"] = phi.numpy(), cfa_bank.T.numpy(), np.array(radius)
    g["cfa_loss_x1000"] = np.array(float(loss.detach()))
    g["cfa_rep_active"] = np.array(float((radius**2 - nearest6[:, :, 3:] - 0.1 > 0).float().mean()))
    g["cfa_scores"] = cfa_map.compute_score(distance, (8, 8))[:, 0].numpy()
    g["cfa_anomaly_map"] = cfa_map(distance=distance, scale=(8, 8), image_size=(32, 32))[:, 0].numpy()

    # 7. AUPRO: the MVTec AD script's definition (normalised area up to FPR 0.3), tied scores included
    maps_pro = np.round(rng.random((4, 32, 32)) + 0.0, 2)
    masks_pro = np.zeros((4, 32, 32), dtype=bool)
    masks_pro[0, 4:10, 4:12] = masks_pro[0, 20:24, 20:30] = masks_pro[1, 10:20, 10:14] = masks_pro[2, 0:3, 28:32] = True
    maps_pro[masks_pro] += 0.4 * rng.random(masks_pro.sum())
    fpr, pro = mvtec_pro_curve(maps_pro, masks_pro)
    g["aupro_maps"], g["aupro_masks"] = maps_pro.astype(np.float32), masks_pro
    g["aupro_mvtec"] = np.array(trapezoid_until(fpr, pro, 0.3) / 0.3)
    metric = _AUPRO(fpr_limit=0.3)  # the metric without anomalib's batch plumbing
    metric.update(torch.from_numpy(maps_pro.astype(np.float32)), torch.from_numpy(masks_pro.astype(np.int64)))
    g["aupro_anomalib"] = np.array(float(metric.compute()))  # for the record; anomalib's curve is its own

    np.savez_compressed(OUT, **g)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.1f} kB): {', '.join(sorted(g))}")
    print(f"AUPRO MVTec definition {float(g['aupro_mvtec']):.6f}, anomalib {float(g['aupro_anomalib']):.6f}; "
          f"CFA radius {radius:.3f}, L_rep active on {float(g['cfa_rep_active']):.0%} of hard negatives")
    assert math.isfinite(loss.item())


if __name__ == "__main__":
    main()
