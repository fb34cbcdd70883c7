"""The metric suite: every metric of the registry (:mod:`.registry`: image / pixel AUROC, AP and F1-max, AUPRO@30% FPR, ...);
per-image tables, 95% intervals (score interval for image AUROC, expanded BCa bootstrap ∪ logit jackknife-t for the rest), DeLong and paired-bootstrap
comparisons."""

from .aupro import aupro
from .bootstrap import StratifiedBootstrap
from .classification import auroc, average_precision, f1_max
from .compare import paired
from .intervals import confidence_intervals
from .per_image import read_per_image, write_per_image
from .registry import METRICS, REGISTRY, Metric
from .suite import assess, assess_scored, evaluate
from .weighted import table_metrics, table_per_defect

__all__ = [
    "METRICS", "REGISTRY", "Metric", "StratifiedBootstrap", "assess", "assess_scored", "aupro", "auroc", "average_precision", "confidence_intervals", "evaluate",
    "f1_max",
    "paired", "read_per_image", "table_metrics", "table_per_defect", "write_per_image",
]
