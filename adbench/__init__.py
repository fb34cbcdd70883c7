"""adbench: one pipeline to benchmark memory-bank image anomaly detectors."""

__version__ = "0.1.0"
