"""Pictures of what the models do."""
from .grid import image_grid, save_grid

__all__ = ["image_grid", "save_grid"]
