"""Label images (one integer id per object, 0 for none) as they enter histoexpr.

Segmentation tools often save label images as floats (a float32 TIFF or array holding 0., 1.,
2., ...). :func:`integer_labels` accepts them when every value is a non-negative integer, and
refuses, with the fix, a float image that is not a label image (e.g. a probability map).
"""

from __future__ import annotations

import numpy as np

from .logs import logger


def integer_labels(array: np.ndarray, what: str = "label image") -> np.ndarray:
    """``array`` with an unsigned integer dtype, or a ``ValueError`` naming the problem.

    Integer arrays are returned unchanged; a boolean mask becomes ``uint8``; a float array whose
    values are all finite, non-negative integers becomes the smallest unsigned dtype that holds
    its largest id (a log line says so).
    """
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.integer):
        return array
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"The {what} has dtype {array.dtype}; a label image holds one integer id "
                         "per object (0: none). Pass an integer (or integer-valued) array.")
    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(f"The {what} ({array.dtype}) holds {int(bad.sum())} NaN or infinite "
                         "values; a label image holds integer ids (0: none). Replace them "
                         "(e.g. np.nan_to_num(labels)) before reading.")
    fractional = array != np.round(array)
    if fractional.any():
        where = tuple(int(i) for i in np.argwhere(fractional)[0])
        raise ValueError(
            f"The {what} ({array.dtype}) holds {int(fractional.sum())} non-integer values (e.g. "
            f"{float(array[where]):.6g} at (row, col) {where}): it is not a label image (a "
            "probability or intensity map?). Pass the segmentation's label image, whose pixels "
            "hold integer object ids (0: none).")
    if array.size and array.min() < 0:
        raise ValueError(f"The {what} ({array.dtype}) holds negative values; label ids are "
                         "non-negative integers (0: none). Pass the segmentation's label image.")
    largest = int(array.max()) if array.size else 0
    dtype = next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64)
                 if largest <= np.iinfo(t).max)
    logger.info("The %s is %s with integer values (largest id %d): converted to %s.",
                what, array.dtype, largest, np.dtype(dtype).name)
    return array.astype(dtype)
