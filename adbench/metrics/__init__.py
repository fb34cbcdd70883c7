"""The metric suite: image/pixel AUROC, AUPRO@30% FPR, F1-max."""

from .aupro import aupro
from .classification import auroc, binary_curve, f1_max
from .suite import evaluate

__all__ = ["aupro", "auroc", "binary_curve", "evaluate", "f1_max"]
