"""Images: shipped data sets and file readers (:mod:`.datasets`) and sample grids (:mod:`.grid`)."""
from .datasets import (
                       DIGITS_LEVELS,
                       IMAGE_DATASETS,
                       ImageData,
                       digits,
                       from_levels,
                       load_array,
                       load_folder,
                       load_images,
                       to_levels,
)
from .grid import image_grid, save_grid

__all__ = ["DIGITS_LEVELS", "IMAGE_DATASETS", "ImageData", "digits", "from_levels", "load_array", "load_folder",
           "load_images", "to_levels", "image_grid", "save_grid"]
