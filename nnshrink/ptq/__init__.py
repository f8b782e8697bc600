"""Post-training compression with calibration: sensitivities, weighted sharing, outliers,
error compensation and per-layer bits under a budget (see compress.py)."""

from .compress import PTQResult, compress_model

__all__ = ["PTQResult", "compress_model"]
