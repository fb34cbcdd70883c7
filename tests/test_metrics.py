"""The metric suite against scikit-learn and an independent per-threshold AUPRO reference; undefined metrics and their reasons."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from adbench.metrics import aupro, auroc, average_precision, evaluate, f1_max
from adbench.metrics.aupro import region_weights
from adbench.metrics.per_image import per_image_table
from adbench.metrics.registry import PIXEL_METRICS
from adbench.metrics.weighted import WeightedMetrics
from adbench.metrics.suite import per_defect, undefined_reasons


def reference_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """Straightforward definition: PRO and FPR re-counted at every distinct threshold."""
    regions = []
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labelled == k) for k in range(1, count + 1)]
    normal = maps[~masks]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fprs.append(float((normal >= t).mean()))
        pros.append(float(np.mean([(maps[i][region] >= t).mean() for i, region in regions])))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= limit
    x, y = fprs[keep], pros[keep]
    j = int(keep.sum())
    if j < len(fprs):  # interpolate the point at FPR = limit
        t = (limit - fprs[j - 1]) / (fprs[j] - fprs[j - 1])
        x, y = np.r_[x, limit], np.r_[y, pros[j - 1] + t * (pros[j] - pros[j - 1])]
    return float(np.trapezoid(y, x) / limit)


def random_case(seed: int, n: int = 4, size: int = 24, levels: int | None = None):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(n - 1):
        for _ in range(rng.integers(1, 4)):
            y, x, h, w = rng.integers(0, size - 4, 2).tolist() + rng.integers(1, 6, 2).tolist()
            masks[i, y : y + h, x : x + w] = True
    maps = rng.random((n, size, size)) + 0.6 * masks * rng.random()
    if levels:  # many ties
        maps = np.round(maps * levels) / levels
    return maps, masks


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [None, 7])
def test_aupro_matches_per_threshold_reference(seed: int, levels: int | None) -> None:
    maps, masks = random_case(seed, levels=levels)
    assert aupro(maps, masks) == pytest.approx(reference_aupro(maps, masks), abs=1e-3)


def test_aupro_hand_cases() -> None:
    masks = np.zeros((1, 1, 11), bool)
    masks[0, 0, 5] = True
    perfect = np.arange(11, dtype=float)[None, None] * 0
    perfect[0, 0, 5] = 1.0
    assert aupro(perfect, masks) == pytest.approx(1.0)
    worst = np.ones((1, 1, 11))
    worst[0, 0, 5] = 0.0
    assert aupro(worst, masks) == pytest.approx(0.0)
    # one normal pixel (of 10) outranks the single defect pixel: PRO jumps to 1 at FPR 0.1,
    # area over [0.1, 0.3] = 0.2, normalised by 0.3
    one_above = np.zeros((1, 1, 11))
    one_above[0, 0, 0], one_above[0, 0, 5] = 2.0, 1.0
    assert aupro(one_above, masks) == pytest.approx(2 / 3)


def test_regions_are_eight_connected() -> None:
    diagonal = np.array([[[1, 0], [0, 1]]], bool)
    _, count = region_weights(diagonal)
    assert count == 1
    weights, count = region_weights(np.array([[[1, 0, 1]]], bool))
    assert count == 2 and weights.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(4))
def test_auroc_ap_and_f1_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(500) < 0.3
    scores = np.round(rng.random(500) + labels * 0.3, 1)  # ties included
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    assert f1_max(scores, labels) == pytest.approx(f1.max(), abs=1e-12)


def reference_tnr_at_95_tpr(scores: np.ndarray, labels: np.ndarray) -> float:
    """1 - FPR at the first ROC point (thresholds falling) with TPR >= 95%, every threshold kept."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(1 - fpr[np.argmax(tpr >= 0.95)])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [None, 8])
def test_tnr_at_95_tpr_matches_sklearn_roc_curve(seed: int, levels: int | None) -> None:
    """Exact (one threshold per distinct score, ties included) and under bootstrap weights (images repeated)."""
    rng = np.random.default_rng(seed)
    labels = rng.random(int(rng.integers(40, 300))) < 0.4
    scores = rng.normal(size=labels.size) + 1.5 * labels
    scores = np.round(scores * levels) / levels if levels else scores
    assert evaluate(labels, scores)["image_tnr_at_95_tpr"] == pytest.approx(reference_tnr_at_95_tpr(scores, labels), abs=1e-12)
    counts = rng.integers(0, 3, labels.size)
    counts[[np.flatnonzero(labels)[0], np.flatnonzero(~labels)[0]]] = 1  # both classes drawn
    table = per_image_table([f"{i}.png" for i in range(labels.size)], labels, ["x"] * labels.size, scores)
    resampled = WeightedMetrics(table)(counts[None], ("image_tnr_at_95_tpr",))["image_tnr_at_95_tpr"][0]
    assert resampled == pytest.approx(reference_tnr_at_95_tpr(np.repeat(scores, counts), np.repeat(labels, counts)), abs=1e-12)


def test_tnr_at_95_tpr_hand_cases() -> None:
    normal = [0.1, 0.2, 0.3, 0.4]
    one_low = np.r_[normal, [0.9] * 19, 0.25]  # 19 of 20 anomalous images above every normal one: 95% reached there
    two_low = np.r_[normal, [0.9] * 18, 0.25, 0.25]  # 90% above: the threshold must fall to 0.25, passing 2 of 4 normal
    labels = np.r_[np.zeros(4), np.ones(20)]
    assert evaluate(labels, one_low)["image_tnr_at_95_tpr"] == 1.0
    assert evaluate(labels, two_low)["image_tnr_at_95_tpr"] == 0.5
    assert evaluate(np.ones(3), np.arange(3.0))["image_tnr_at_95_tpr"] is None


def test_pixel_metrics_match_sklearn() -> None:
    maps, masks = random_case(3, n=6, size=32, levels=20)
    result = evaluate(np.array([1, 1, 1, 1, 1, 0]), np.arange(6.0), masks, maps)
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_undefined_metrics_are_none_not_nan() -> None:
    only_good = np.zeros(5, int)
    assert auroc(np.arange(5.0), only_good) is None
    result = evaluate(only_good, np.arange(5.0), np.zeros((5, 4, 4), bool), np.zeros((5, 4, 4)))
    assert result["image_auroc"] is None and result["pixel_auroc"] is None and result["aupro"] is None
    assert evaluate(np.array([0, 1]), np.array([0.1, 0.9]))["pixel_auroc"] is None


def test_one_class_test_set_has_no_f1_or_ap() -> None:
    """Issue 15: an all-defect test set used to report image F1-max 1.0 while AUROC was n/a."""
    all_defect = np.ones(6, int)
    result = evaluate(all_defect, np.arange(6.0))
    assert result["image_f1_max"] is None and result["image_ap"] is None and result["image_auroc"] is None
    reasons = undefined_reasons(result, all_defect, None, "the dataset has no pixel masks")
    assert reasons["image_f1_max"] == "the test set has no normal image"
    assert reasons["pixel_auroc"] == reasons["aupro"] == "the dataset has no pixel masks"
    assert set(reasons) == {m for m, v in result.items() if v is None}


def test_reasons_name_the_missing_pixels() -> None:
    labels = np.array([0, 0, 1, 1])
    masks, maps = np.zeros((4, 8, 8), bool), np.random.default_rng(0).random((4, 8, 8))
    result = evaluate(labels, np.array([0.1, 0.2, 0.3, 0.4]), masks, maps)
    reasons = undefined_reasons(result, labels, masks, None)
    assert result["image_auroc"] == 1.0 and set(reasons) == set(PIXEL_METRICS)
    assert reasons["aupro"] == "the test masks have no defect pixel"


def test_per_defect_is_each_type_against_the_good_images() -> None:
    rng = np.random.default_rng(1)
    defects = np.array(["good"] * 10 + ["crack"] * 6 + ["hole"] * 4)
    labels = (defects != "good").astype(int)
    scores = rng.random(20) + 0.5 * labels
    maps, masks = random_case(5, n=20, size=16)
    masks[labels == 0] = False
    out = per_defect(labels, list(defects), scores, masks, maps)
    assert list(out) == ["crack", "hole"] and out["crack"]["n"] == 6 and out["hole"]["n"] == 4
    crack = defects != "hole"
    assert out["crack"]["image_auroc"] == pytest.approx(roc_auc_score(labels[crack], scores[crack]), abs=1e-12)
    assert out["hole"]["aupro"] == pytest.approx(reference_aupro(maps[defects != "crack"], masks[defects != "crack"]), abs=1e-3)


def test_nan_scores_raise() -> None:
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([0.1, np.nan]), np.array([0, 1]))
