"""nnshrink: make trained PyTorch networks small and fast."""

__version__ = "0.1.0"
