"""Dense class maps: a patch classifier slid over a section, strip by strip."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..._core.devices import autocast, resolve_precision
from ..._core.image import check_pixel_size_stated, image_levels, read_region, to_unit_float
from ..._core.logs import log_added, logger, progress
from ..._core.ownership import check_keys_writable, replace_elements, require_element
from ..._core.seeds import resolve_device
from ..._core.spatial_uns import add_spatial_uns

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ...models import PatchEnsemble

#: how the elements this step writes record their writer (see ``_core.ownership.store_element``),
#: with the kind of model (its ``metadata["model"]``) and the call's ``key_added``: only a call of
#: the same kind of model and key_added replaces them
STEP = "hx.tl.predict"

#: pixels of the image held at once (a strip of rows of the map, with its margins)
_STRIP_PIXELS = 8_000_000
#: cells are placed on a grid this many times finer than the map (as transcript_labels does)
_CELL_SUBSTEPS = 4
#: bytes per map cell and class: the map, its share summed over members, a smoothed or
#: calibrated copy (float32 each)
_MAP_BYTES_PER_CLASS = 3 * 4


def predict_map(model: PatchEnsemble, sdata: SpatialData, *, image_key: str | None,
                region: Sequence[float] | None, stride_um: float | None, cells: str | None,
                smooth_um: float | None, calibrate: bool, batch_size: int,
                device: str | None, key_added: str, overwrite: bool) -> None:
    """See :func:`histoexpr.tl._patch._patch_classifier.predict`."""
    from ..._core.cells import require_cells

    _check_patch_model(model)
    check_map_keys(sdata, key_added, overwrite=overwrite, model=model.metadata["model"])
    if cells is not None:
        require_cells(sdata, cells)
    if smooth_um is not None and not smooth_um > 0:
        raise ValueError(f"smooth_um must be a positive width in um or None, got {smooth_um!r}.")
    calibration = model.metadata.get("calibration") if calibrate else None
    probabilities, origin, stride = dense_probabilities(
        model, sdata, image_key=image_key, region=region, stride_um=stride_um,
        batch_size=batch_size, device=device, cells=cells)
    classes = {str(k): int(v) for k, v in model.metadata["classes"].items()}
    table = None
    if cells is not None:
        means, names, centroids, ids = cell_probabilities(sdata, cells, probabilities, origin,
                                                          stride, classes, smooth_um)
        means = calibrated(means, calibration, classes)
        probabilities = cells_to_map(means, ids, classes)
        table = cell_table(means, names, centroids, classes)
        add_spatial_uns(table, sdata, image_key or model.metadata["image_key"])
    else:
        if smooth_um is not None:
            from scipy.ndimage import gaussian_filter

            probabilities = gaussian_filter(probabilities, sigma=(
                0, smooth_um / stride, smooth_um / stride), mode="nearest")
        probabilities = np.moveaxis(calibrated(np.moveaxis(probabilities, 0, -1), calibration,
                                               classes), -1, 0)
    if calibration is not None:
        logger.info("Calibrated the probabilities: class-prior exponent %.2g, temperature "
                    "%.2g (fitted on the validation patches; calibrate=False turns it off).",
                    calibration["exponent"], calibration["temperature"])
    write_map(sdata, probabilities, classes, origin, stride, key_added=key_added,
              overwrite=overwrite, table=table, model=model.metadata["model"])


def map_keys(key_added: str) -> tuple[str, str, str]:
    """The elements a dense map writes: the label map, its probabilities, the cells' table."""
    return key_added, f"{key_added}_probabilities", f"{key_added}_cells"


def check_map_keys(sdata: SpatialData, key_added: str, *, overwrite: bool, model: str) -> None:
    """Refuse, before any work, a key of the map that the call may not write (or replace).

    Every key is checked, whatever ``overwrite`` is: an existing element is replaced only with
    ``overwrite=True`` and only where the same kind of ``model`` wrote it under this
    ``key_added`` (see :func:`histoexpr._core.ownership.check_key_writable`).
    """
    check_keys_writable(sdata, map_keys(key_added), overwrite=overwrite, step=STEP, model=model,
                        group=key_added)


def _check_patch_model(model) -> None:
    from ...models import PatchEnsemble

    if not isinstance(model, PatchEnsemble) or model.metadata.get("model") != "patch_classifier":
        raise TypeError("predict needs a model from hx.tl.fit(..., model='patch_classifier') or "
                        f"a file of one, got {type(model).__name__}.")


def dense_probabilities(model: PatchEnsemble, sdata: SpatialData, *, image_key: str | None,
                        region: Sequence[float] | None, stride_um: float | None,
                        batch_size: int = 256, device: str | None = None,
                        cells: str | None = None,
                        ) -> tuple[np.ndarray, tuple[float, float], float]:
    """The patch classifier's class probabilities ``(K, H, W)`` on a grid over ``region``.

    Returns the probabilities (uncalibrated), the grid's corner (x, y) and its step in um. The
    memory of the map (and, with ``cells``, of the cells' raster on the finer grid) is
    estimated before any patch is read.
    """
    from ...models import PatchEnsemble

    _check_patch_model(model)
    meta = model.metadata
    image_key = meta["image_key"] if image_key is None else image_key
    require_element(sdata, image_key, "images")
    check_pixel_size_stated(sdata, image_key)  # patches are read at the model's um/px
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
    check_map_memory(sdata, shape, (x0, y0, x1, y1), stride, n_classes=model.n_classes,
                     cells=cells, grid_um=float(meta["grid_um"]))

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
    return probabilities, (x0, y0), stride


def check_map_memory(sdata: SpatialData, shape: tuple[int, int],
                     bounds: tuple[float, float, float, float], stride: float, *,
                     n_classes: int, cells: str | None, grid_um: float) -> None:
    """Refuse, before any pixel is read, a class map (and cell raster) beyond the memory limit.

    The map holds :data:`_MAP_BYTES_PER_CLASS` bytes per grid cell and class; with ``cells``,
    the cells are rasterised on a grid :data:`_CELL_SUBSTEPS` times finer
    (:func:`~histoexpr._core.cells.raster_bytes_per_px` per pixel of it).
    """
    from ..._core.cells import raster_bytes_per_px
    from ..._core.memory import check_memory

    per_cell = n_classes * _MAP_BYTES_PER_CLASS
    if cells is not None:
        per_cell += _CELL_SUBSTEPS**2 * raster_bytes_per_px(sdata, cells)
    x0, y0, x1, y1 = bounds
    check_memory(
        float(shape[0]) * shape[1] * per_cell,
        f"A map of {shape[1]:,} x {shape[0]:,} grid cells ({stride:g} um apart over "
        f"{x1 - x0:g} x {y1 - y0:g} um, {n_classes} classes"
        f"{'' if cells is None else f', with the cells on a grid {_CELL_SUBSTEPS} times finer'})",
        f"Pass a larger stride_um (the model's grid is {grid_um:g} um) or a smaller "
        "region=(x_min, y_min, x_max, y_max).")


def calibrated(probabilities: np.ndarray, calibration: dict | None,
               classes: dict[str, int]) -> np.ndarray:
    """Probabilities ``(..., K)`` corrected by a fitted calibration (``None``: unchanged).

    ``q_k`` is proportional to ``(p_k * prior_k ** exponent) ** (1 / temperature)``: the
    class-prior correction of a network trained on class-balanced patches, then temperature
    scaling; zero probabilities (a cell is not background) stay zero.
    """
    if calibration is None:
        return probabilities
    prior = np.array([float(calibration["prior"][name]) for name in classes])
    with np.errstate(divide="ignore"):
        logits = (np.log(np.clip(probabilities, 0, None))
                  + float(calibration["exponent"]) * np.log(np.maximum(prior, 1e-12)))
    logits = logits / float(calibration["temperature"])
    peak = np.max(np.where(np.isfinite(logits), logits, -np.inf), axis=-1, keepdims=True)
    weights = np.exp(logits - np.where(np.isfinite(peak), peak, 0))
    total = weights.sum(axis=-1, keepdims=True)
    return (weights / np.where(total > 0, total, 1)).astype(probabilities.dtype)


def write_map(sdata: SpatialData, probabilities: np.ndarray, classes: dict[str, int],
              origin: tuple[float, float], stride: float, *, key_added: str, overwrite: bool,
              model: str, table=None) -> None:
    """Write a class map, its probabilities and (per cell) the cells' table.

    Every element is made first; then all keys are checked again and the elements an earlier
    call of the same kind of ``model`` wrote under ``key_added`` are replaced together.
    """
    from spatialdata.models import Image2DModel, Labels2DModel

    from ..._core.elements import scale_to_global

    probabilities_key = f"{key_added}_probabilities"
    values = np.asarray(list(classes.values()), dtype=np.uint8)
    labels = values[probabilities.argmax(axis=0)]
    transformation = scale_to_global(stride, *origin)
    image = Image2DModel.parse(probabilities.astype(np.float32), dims=("c", "y", "x"),
                               c_coords=list(classes), transformations=transformation)
    label_map = Labels2DModel.parse(labels, dims=("y", "x"), transformations=transformation)
    label_map.attrs["classes"] = classes
    elements = [("labels", key_added, label_map), ("images", probabilities_key, image)]
    if table is not None:
        elements.append(("tables", f"{key_added}_cells", table))
    replace_elements(sdata, elements, overwrite=overwrite, step=STEP, model=model,
                     group=key_added)
    log_added("labels", key_added, f"{labels.shape[1]}x{labels.shape[0]} at {stride:g} um/px")
    log_added("images", probabilities_key, f"{len(classes)} class probabilities")
    if table is not None:
        log_added("tables", f"{key_added}_cells", f"{table.n_obs} cells, one column per class")


def cell_probabilities(sdata: SpatialData, cells: str, probabilities: np.ndarray,
                       origin: tuple[float, float], step: float, classes: dict[str, int],
                       smooth_um: float | None):
    """Each cell's mean of a dense map ``(K, H, W)``, the background class excluded.

    A cell covering pixels of the map takes the mean over them; a cell too small to cover one
    takes the mean over the pixels its polygon touches on a grid four times finer. Returns
    ``(means (n, K), names, centroids (n, 2) um, ids)``: ``ids`` is the cell raster of the map
    (``i`` in the cell ``names[i - 1]``, 0 outside every cell).
    """
    from ..._core.cells import cell_centroids, cell_means, smooth_over_cells

    sub = _CELL_SUBSTEPS
    shape = probabilities.shape[1:]
    ids, fine_ids, names = cells_on_grid(sdata, cells, origin, step, shape)
    means = cell_means(probabilities, ids) if ids.max() else np.zeros((0, len(probabilities)))
    means = np.vstack([means, np.zeros((len(names) - len(means), len(probabilities)))])
    covered = np.zeros(len(names), dtype=bool)
    covered[np.unique(ids[ids > 0]) - 1] = True
    if not covered.all():  # cells between the map's pixel centres: the finer grid
        missing = np.flatnonzero(~covered) + 1
        rows, cols = np.nonzero(np.isin(fine_ids, missing))
        which = np.searchsorted(missing, fine_ids[rows, cols])
        rows, cols = np.minimum(rows // sub, shape[0] - 1), np.minimum(cols // sub, shape[1] - 1)
        area = np.bincount(which, minlength=len(missing))
        means[~covered] = np.column_stack([
            np.bincount(which, weights=channel[rows, cols], minlength=len(missing))
            for channel in probabilities]) / np.maximum(area, 1)[:, None]
        logger.info("%d cells cover no pixel centre of the %g um map; they take the mean over "
                    "the pixels their polygon touches.", int((~covered).sum()), step)
    centroids = cell_centroids(fine_ids, origin, step / sub)
    if smooth_um is not None:
        means = smooth_over_cells(means, centroids, float(smooth_um))
    background = list(classes).index("background")
    means[:, background] = 0
    means /= np.maximum(means.sum(axis=1, keepdims=True), 1e-12)
    logger.info("Classified %d cells of %r (mean probability over each cell%s).", len(names),
                cells, "" if smooth_um is None else f", smoothed over {smooth_um:g} um")
    return means.astype(np.float32), names, centroids, ids


def cells_on_grid(sdata: SpatialData, cells: str, origin: tuple[float, float], step: float,
                  shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cells on a grid and on one four times finer (as ``transcript_labels`` places them).

    Returns ``(ids, fine_ids, names)``: the cell of each pixel of the grid (sampled from the
    finer one), of each pixel of the finer grid, and the names of the cells on the finer grid.
    """
    from ..._core.cells import cell_raster

    sub = _CELL_SUBSTEPS
    fine_ids, names = cell_raster(sdata, cells, origin, step / sub,
                                  (shape[0] * sub, shape[1] * sub))
    ids = np.zeros(shape, dtype=np.int32)
    coarse = fine_ids[sub // 2 :: sub, sub // 2 :: sub]
    ids[: coarse.shape[0], : coarse.shape[1]] = coarse
    return ids, fine_ids, names


def cells_to_map(means: np.ndarray, ids: np.ndarray, classes: dict[str, int]) -> np.ndarray:
    """A probability map ``(K, H, W)``: each cell's probabilities, background outside."""
    out = np.zeros((len(classes), *ids.shape), dtype=np.float32)
    out[list(classes).index("background")] = 1
    inside = ids > 0
    out[:, inside] = means[ids[inside] - 1].T
    return out


def cell_table(means: np.ndarray, names: np.ndarray, centroids: np.ndarray,
               classes: dict[str, int]):
    """The per-cell predictions as a table: X the probabilities, obs the label and class."""
    import anndata as ad
    import pandas as pd
    from spatialdata.models import TableModel

    best = means.argmax(axis=1)
    values = np.asarray(list(classes.values()))[best]
    obs = pd.DataFrame({"label": values.astype(np.int64),
                        "class": pd.Categorical(np.asarray(list(classes))[best],
                                                categories=list(classes))},
                       index=pd.Index(np.asarray(names).astype(str), name="cell_id"))
    table = ad.AnnData(X=means.astype(np.float32), obs=obs,
                       var=pd.DataFrame(index=pd.Index(list(classes), name="class")),
                       obsm={"spatial": np.asarray(centroids, dtype=float)})
    return TableModel.parse(table)


def per_cell(sdata: SpatialData, cells: str, probabilities: np.ndarray,
             origin: tuple[float, float], step: float, classes: dict[str, int],
             smooth_um: float | None) -> np.ndarray:
    """A dense probability map ``(K, H, W)`` made per cell: see ``predict(cells=...)``."""
    means, _, _, ids = cell_probabilities(sdata, cells, probabilities, origin, step, classes,
                                          smooth_um)
    return cells_to_map(means, ids, classes)


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
        return level0.bounds
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
