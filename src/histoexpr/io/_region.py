"""The public face in io of the shared image access (:mod:`histoexpr._core.image`).

The image access lives at the top of the package because every room reads images; ``hx.io`` is
where users find it.
"""

from .._core.image import get_pixel_size, image_levels, read_region

__all__ = ["get_pixel_size", "image_levels", "read_region"]
