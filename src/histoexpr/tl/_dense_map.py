"""Dense class maps: a patch classifier slid over a section, strip by strip."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._devices import autocast, resolve_precision
from .._utils import (
    check_key_free,
    check_key_writable,
    log_added,
    logger,
    progress,
    require_element,
    resolve_device,
    store_element,
)
from ..io._image import image_levels, read_region, to_unit_float
from ._segmentation_metrics import _bounds

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ..models import PatchEnsemble

#: how the elements this step writes record their writer (see ``_utils.store_element``)
STEP = "hx.tl.predict"

#: pixels of the image held at once (a strip of rows of the map, with its margins)
_STRIP_PIXELS = 8_000_000


def predict_map(model: PatchEnsemble, sdata: SpatialData, *, image_key: str | None,
                region: Sequence[float] | None, stride_um: float | None, cells: str | None,
                smooth_um: float | None, batch_size: int,
                device: str | None, key_added: str, overwrite: bool) -> None:
    """See :func:`histoexpr.tl._patch_classifier.predict`."""
    from spatialdata.models import Image2DModel, Labels2DModel

    from ..io._elements import scale_to_global
    from ..models import PatchEnsemble
    from ..pp._cells import require_cells

    if not isinstance(model, PatchEnsemble) or model.metadata.get("model") != "patch_classifier":
        raise TypeError("predict needs a model from hx.tl.fit(..., model='patch_classifier') or "
                        f"a file of one, got {type(model).__name__}.")
    meta = model.metadata
    image_key = meta["image_key"] if image_key is None else image_key
    require_element(sdata, image_key, "images")
    probabilities_key = f"{key_added}_probabilities"
    for key in (key_added, probabilities_key):
        check_key_writable(sdata, key, overwrite=overwrite, step=STEP)
    if cells is not None:
        require_cells(sdata, cells)
    if smooth_um is not None and not smooth_um > 0:
        raise ValueError(f"smooth_um must be a positive width in um or None, got {smooth_um!r}.")
    level0 = image_levels(sdata, image_key)[0]
    _check_image(level0, model, meta, image_key)
    member_mpp = [float(m) for m in meta.get("member_mpp", [meta["mpp"]] * len(model.members))]
    coarsest = max(member_mpp)
    requested = float(meta["grid_um"] if stride_um is None else stride_um)
    stride = max(1, round(requested / coarsest)) * coarsest
    if abs(stride - requested) > 1e-6 * requested:
        logger.info("Stride %g um rounded to %g um, a whole number of the model's %g um pixels.",
                    requested, stride, coarsest)
    x0, y0, x1, y1 = _region(level0, region)
    shape = (max(1, int((y1 - y0) / stride + 1e-6)), max(1, int((x1 - x0) / stride + 1e-6)))

    probabilities = np.zeros((model.n_classes, *shape), dtype=np.float32)
    for mpp in sorted(set(member_mpp)):  # members of one pixel size share their reads
        members = [m for m, m_mpp in zip(model.members, member_mpp, strict=True) if m_mpp == mpp]
        step_px = round(stride / mpp)
        if abs(step_px * mpp - stride) > 1e-3 * stride:
            raise ValueError(f"The stride {stride:g} um is not a whole number of the {mpp:g} um "
                             "pixels of a member; choose stride_um as a multiple of every "
                             f"member's pixel size ({sorted(set(member_mpp))}).")
        group = PatchEnsemble.of(members) if len(members) < len(model.members) else model
        probabilities += len(members) * _slide(group, sdata, image_key, (x0, y0), shape,
                                               step_px, mpp, batch_size=batch_size,
                                               device=resolve_device(device))
    probabilities /= len(member_mpp)
    classes = {str(k): int(v) for k, v in meta["classes"].items()}
    if cells is not None:
        probabilities = per_cell(sdata, cells, probabilities, (x0, y0), stride, classes,
                                 smooth_um)
    elif smooth_um is not None:
        from scipy.ndimage import gaussian_filter

        probabilities = gaussian_filter(probabilities, sigma=(0, smooth_um / stride,
                                                              smooth_um / stride), mode="nearest")
    values = np.asarray(list(classes.values()), dtype=np.uint8)
    labels = values[probabilities.argmax(axis=0)]
    transformation = scale_to_global(stride, x0, y0)
    image = Image2DModel.parse(probabilities, dims=("c", "y", "x"), c_coords=list(classes),
                               transformations=transformation)
    label_map = Labels2DModel.parse(labels, dims=("y", "x"), transformations=transformation)
    label_map.attrs["classes"] = classes
    check_key_free(sdata, key_added, overwrite=overwrite, step=STEP)
    check_key_free(sdata, probabilities_key, overwrite=overwrite, step=STEP)
    store_element(sdata, "labels", key_added, label_map, step=STEP)
    store_element(sdata, "images", probabilities_key, image, step=STEP)
    log_added("labels", key_added, f"{shape[1]}x{shape[0]} at {stride:g} um/px")
    log_added("images", probabilities_key, f"{len(classes)} class probabilities")


def per_cell(sdata: SpatialData, cells: str, probabilities: np.ndarray,
             origin: tuple[float, float], step: float, classes: dict[str, int],
             smooth_um: float | None) -> np.ndarray:
    """A dense probability map ``(K, H, W)`` made per cell: see ``predict(cells=...)``."""
    from ..pp._cells import cell_centroids, cell_means, cell_raster, smooth_over_cells

    ids, names = cell_raster(sdata, cells, origin, step, probabilities.shape[1:])
    means = cell_means(probabilities, ids)
    if smooth_um is not None:
        means = smooth_over_cells(means, cell_centroids(ids, origin, step), float(smooth_um))
    background = list(classes).index("background")
    means[:, background] = 0
    means /= np.maximum(means.sum(axis=1, keepdims=True), 1e-12)
    out = np.zeros_like(probabilities)
    out[background] = 1
    inside = ids > 0
    out[:, inside] = means[ids[inside] - 1].T
    logger.info("Classified %d cells of %r (mean probability over each cell%s).", len(names),
                cells, "" if smooth_um is None else f", smoothed over {smooth_um:g} um")
    return out


def _check_image(level0, model, meta: dict, image_key: str) -> None:
    channels = int(level0.data.sizes.get("c", 1))
    if channels != model.in_channels:
        raise ValueError(f"The model was trained on {model.in_channels}-channel images, but "
                         f"{image_key!r} has {channels} channel(s); apply it to the same kind of "
                         "image (DAPI: 1, H&E: 3).")
    trained = meta.get("image_mpp")
    if trained is not None and abs(level0.mpp - trained) > 1e-3 * trained:
        logger.info("%r has %g um/px, the training image %g um/px: patches are read rescaled to "
                    "the model's %g um/px.", image_key, level0.mpp, trained, meta["mpp"])


def _region(level0, region) -> tuple[float, float, float, float]:
    if region is None:
        return _bounds(level0)
    box = tuple(float(v) for v in region)
    if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
        raise ValueError(f"region must be (x_min, y_min, x_max, y_max) with max > min, got "
                         f"{region!r}.")
    return box


def _slide(model, sdata, image_key: str, origin: tuple[float, float], shape: tuple[int, int],
           step_px: int, mpp: float, *, batch_size: int, device: str) -> np.ndarray:
    """Class probabilities ``(K, H, W)`` of patches centred on the grid cells."""
    n_rows, n_cols = shape
    sizes = list(model.patch_px)
    margin = max(sizes) // 2  # pixels from a patch centre to the edge of the largest patch
    width_px = (n_cols - 1) * step_px + 2 * margin
    rows_per_strip = max(1, (_STRIP_PIXELS // width_px - 2 * margin) // step_px)
    out = np.zeros((model.n_classes, n_rows, n_cols), dtype=np.float32)
    model = model.to(device).eval()
    x_left = origin[0] + (0.5 * step_px - margin) * mpp
    starts = range(0, n_rows, rows_per_strip)
    with torch.inference_mode(), autocast(resolve_precision(device)):
        for r0 in progress(starts, desc="dense map", total=len(starts)):
            r1 = min(n_rows, r0 + rows_per_strip)
            y_top = origin[1] + ((r0 + 0.5) * step_px - margin) * mpp
            height_px = (r1 - r0 - 1) * step_px + 2 * margin
            pixels = read_region(sdata, image_key, (x_left, y_top, x_left + width_px * mpp,
                                                    y_top + height_px * mpp), mpp=mpp,
                                 outside="fill")
            strip = torch.from_numpy(to_unit_float(pixels)).to(device)
            for r in range(r1 - r0):
                patches = [_row_patches(strip, r * step_px + margin, margin, size, step_px)[:n_cols]
                           for size in sizes]
                for c0 in range(0, n_cols, batch_size):
                    batch = [p[c0 : c0 + batch_size] for p in patches]
                    out[:, r0 + r, c0 : c0 + batch_size] = model(batch).T.float().cpu().numpy()
    return out


def _row_patches(strip: torch.Tensor, centre_row: int, margin: int, size: int,
                 step_px: int) -> torch.Tensor:
    """Patches ``(W, C, size, size)`` centred on one row of grid cells of a strip."""
    half = size // 2
    band = strip[:, centre_row - half : centre_row + half, margin - half :]
    # (C, size, W', size) -> (W', C, size, size): a view until the model reads it
    return band.unfold(2, size, step_px).permute(2, 0, 1, 3)
