"""Building blocks sized from the image shape (C, H, W)."""
from .mlp import mlp

__all__ = ["mlp"]
