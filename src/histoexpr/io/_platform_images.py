"""The images of the imaging platforms: the nuclear stain apart, and Xenium's aligned H&E.

- :func:`focus_files_apart` and :func:`read_focus_files` read Xenium's ``morphology_focus/``
  (XOA 2 and 3: one file per channel) where spatialdata-io cannot: files that each hold their own
  channel only, not one multi-file OME-TIFF described by the first file.
- :func:`mosaic_layer` and :func:`read_mosaics` read MERSCOPE's mosaics of one z plane
  (``images/mosaic_<stain>_z<z>.tif``) tile by tile, as one image of one channel per stain.
- :func:`split_stains` stores the nuclear stain (DAPI) alone under the image key, so that the
  steps that expect one nuclear channel (the tissue test of
  :func:`histoexpr.pp.transcript_labels`, tiling, the fluorescence augmentations) see one
  channel, and the other stains under a second key.
- :func:`he_files` finds (or checks) the post-Xenium H&E image and its alignment CSV, and
  :func:`read_he` reads them through :func:`spatialdata_io.xenium_aligned_image`, then brings the
  image to histoexpr's convention: ``Scale(mpp)`` and a translation to ``"global"`` (um), where
  ``mpp`` is the H&E's own pixel size given by the alignment. An alignment that rotates, flips
  or shears the image is resampled lazily (spatialdata's ``transform``) onto an axis-aligned grid
  at the same pixel size, since histoexpr reads regions only from axis-aligned images.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._core.elements import COORDINATE_SYSTEM
from .._core.logs import logger
from ._elements import CHUNK_PX, pyramid_factors

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: the names 10x gives the post-Xenium H&E image and its alignment (spatialdata-io's rule)
HE_SUFFIX = "he_image.ome.tif"
ALIGNMENT_SUFFIX = "alignment.csv"
#: XOA 2 and 3's morphology focus files, one channel each, and the stains of the 4 channels of
#: the multimodal cell segmentation kit, in the files' order (10x's and spatialdata-io's names)
FOCUS_DIR, FOCUS_FILE = "morphology_focus", "morphology_focus_{:04}.ome.tif"
FOCUS_CHANNELS = ("DAPI", "ATP1A1/CD45/E-Cadherin", "18S", "AlphaSMA/Vimentin")


def _channels(image) -> list[str]:
    import xarray as xr

    array = image["scale0"]["image"] if isinstance(image, xr.DataTree) else image
    return [str(c) for c in array.coords["c"].values]


def _select(image, channels: list[str]):
    """The image (DataArray or multiscale DataTree) with only ``channels``, in that order."""
    import xarray as xr

    if isinstance(image, xr.DataTree):
        return xr.DataTree.from_dict({name: image[name].to_dataset().sel(c=channels)
                                      for name in image.children})
    return image.sel(c=channels)


def split_stains(sdata: SpatialData, old: str, image_key: str, stains_key: str | None,
                 nuclear_stain: str, platform: str, *, sort: bool = False) -> None:
    """Store the ``nuclear_stain`` channel of ``sdata.images[old]`` as ``image_key``, alone.

    The other channels go to ``stains_key`` (dropped when it is ``None``). A one-channel image is
    the nuclear stain whatever its channel's name (Xenium's XOA 1 focus image is DAPI only).
    ``sort`` orders the other stains by name (MERSCOPE's mosaics come in directory order).
    """
    if old not in sdata.images:
        return
    image = sdata.images[old]
    channels = _channels(image)
    nuclear = [c for c in channels if c.lower() == nuclear_stain.lower()]
    if not nuclear and len(channels) == 1:
        nuclear = channels
    if not nuclear:
        raise ValueError(
            f"The {platform} image has no channel named {nuclear_stain!r} (it has "
            f"{sorted(channels)}). Pass nuclear_stain= one of these (the nuclear stain).")
    others = [c for c in channels if c not in nuclear[:1]]
    if sort:
        others.sort()
    del sdata.images[old]
    sdata.images[image_key] = _select(image, nuclear[:1]) if others else image
    if others and stains_key is not None:
        sdata.images[stains_key] = _select(image, others)


def _series_channels(path: Path) -> int:
    """The number of channels of the first series of a TIFF file (1 for a plain 2-D image)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        return int(series.shape[series.axes.index("C")]) if "C" in series.axes else 1


def focus_files_apart(folder: Path) -> list[Path] | None:
    """The files of ``morphology_focus/`` that histoexpr reads one by one, else ``None``.

    XOA 2 and 3 write the channels (DAPI, boundary, interior RNA and protein stains) as one
    multi-file OME-TIFF, ``morphology_focus_0000.ome.tif`` to ``_0003``, whose first file
    describes all of them: spatialdata-io reads it through that file. Files that each describe
    only their own channel (rewritten or converted one by one) would leave it one channel for
    four names; they are returned here, in their order, to be read by :func:`read_focus_files`.
    """
    focus = folder / FOCUS_DIR
    files = [focus / FOCUS_FILE.format(i) for i in range(100)]
    files = files[: next((i for i, f in enumerate(files) if not f.is_file()), len(files))]
    if len(files) < 2 or _series_channels(files[0]) == len(files):
        return None
    return files


def read_focus_files(files: list[Path]):
    """The channels of ``morphology_focus/``, one per file, as one lazy image (pixels to global).

    Each file's pyramid levels are read tile by tile (as :func:`histoexpr.io.read_wsi` reads a
    slide); a channel is named as its file's OME-XML names it, else as 10x names the kit's
    stains (:data:`FOCUS_CHANNELS`). ``"global"`` is the image's pixels, as spatialdata-io gives
    it (the reader then scales it to micrometres).
    """
    import dask.array as da
    import tifffile

    from ._elements import image_element, image_element_from_levels
    from ._wsi import _level_array, _ome_channel_names

    per_file, names = [], []
    for i, path in enumerate(files):
        tif = tifffile.TiffFile(path)
        if hasattr(tif.filehandle, "set_lock"):
            tif.filehandle.set_lock(True)  # dask reads tiles from several threads
        # parsed while open: _level_array reads through a copy already open, if any
        said = _ome_channel_names(tif.ome_metadata) if tif.is_ome and tif.ome_metadata else []
        levels = [_level_array(tif, path, k) for k in range(len(tif.series[0].levels))]
        names.append(said[i] if len(said) == len(files) else said[0] if len(said) == 1 else "")
        per_file.append(levels)
    shapes = [tuple(levels[0].shape) for levels in per_file]
    if any(shape != (1, *shapes[0][1:]) for shape in shapes):
        listed = ", ".join(f"{p.name}: {s}" for p, s in zip(files, shapes, strict=True))
        raise ValueError(
            "The files of the Xenium morphology focus folder differ in shape or hold more than "
            f"one channel each ({listed}), "
            "so they cannot be read as the channels of one image. Copy the folder again from "
            "the run's output, or pass image=False.")
    if not all(names) or len(set(names)) < len(names):
        names = [*FOCUS_CHANNELS, *(f"c{i}" for i in range(4, len(files)))][: len(files)]
    depth = min(len(levels) for levels in per_file)
    while depth > 1 and len({tuple(levels[depth - 1].shape) for levels in per_file}) > 1:
        depth -= 1
    stacked = [da.concatenate([levels[k] for levels in per_file]) for k in range(depth)]
    logger.info("Read the %d channels of the morphology focus image from their own files (%s).",
                len(files), ", ".join(names))
    if depth == 1:  # no pyramid in the files: halved lazily, as spatialdata-io would
        return image_element(stacked[0], mpp=1.0, channels=names)
    return image_element_from_levels(stacked, mpp=1.0, channels=names)


def mosaic_layer(images: Path, z_layer: int | None) -> tuple[int, list[str]]:
    """The z plane of MERSCOPE mosaics to read, and its stains (sorted).

    ``z_layer``, or where it is ``None`` the middle one of the planes ``images`` holds (z3 of
    a full output's z0 to z6; z0 of an output that kept only z0). A plane the folder does not
    have is refused, naming those it has.
    """
    import re

    planes: dict[int, list[str]] = {}
    for path in images.glob("mosaic_*_z*.tif"):
        found = re.fullmatch(r"mosaic_(.+)_z(\d+)\.tif", path.name)
        if found:
            planes.setdefault(int(found[2]), []).append(found[1])
    layers = sorted(planes)
    if z_layer is None and layers:
        z_layer = layers[(len(layers) - 1) // 2]
        logger.info("Reading the mosaics of z plane %d (the middle one of the planes %s); pass "
                    "z_layer= to read another.", z_layer, layers)
    if z_layer not in planes:
        present = sorted(p.name for p in images.glob("mosaic_*_z*.tif"))
        asked = "" if z_layer is None else f" of z_layer={z_layer}"
        raise FileNotFoundError(
            f"The MERSCOPE folder {str(images.parent)!r} has no mosaic image{asked} "
            f"(images/mosaic_<stain>_z<z>.tif; it has the z plane(s) {layers or 'none'}: "
            f"{present or 'no mosaic'}). Pass the z_layer of an image it has, or image=False.")
    return z_layer, sorted(planes[z_layer])


def read_mosaics(images: Path, stains: list[str], z_layer: int):
    """The mosaics of ``stains`` at ``z_layer`` as one lazy image, read tile by tile.

    One channel per stain, named after it; ``"global"`` is the mosaic's pixels (the reader
    then maps it to micrometres by the region's transform).
    """
    import dask.array as da
    import tifffile

    from ._elements import image_element
    from ._wsi import _level_array

    planes = []
    for stain in stains:
        path = images / f"mosaic_{stain}_z{z_layer}.tif"
        tif = tifffile.TiffFile(path)
        if hasattr(tif.filehandle, "set_lock"):
            tif.filehandle.set_lock(True)  # dask reads tiles from several threads
        _ = tif.series[0].levels  # parsed while open: a copy already open is used instead
        planes.append(_level_array(tif, path, 0))
    shapes = [tuple(plane.shape) for plane in planes]
    if any(shape != (1, *shapes[0][1:]) for shape in shapes):
        listed = ", ".join(f"{s}: {shape}" for s, shape in zip(stains, shapes, strict=True))
        raise ValueError(
            f"The MERSCOPE mosaics of z plane {z_layer} differ in shape or hold more than one "
            f"channel each ({listed}). Copy them again from the MERSCOPE output, or pass "
            "image=False.")
    return image_element(da.concatenate(planes), mpp=1.0, channels=stains)


def _resolve(path: str | Path, folder: Path) -> Path:
    """``path`` where absolute, else ``folder / path``: never the working folder's file.

    A relative name is the sample's own file; read from the working folder, a file of the same
    name there (another sample's H&E) would be placed on this sample without a word.
    """
    path = Path(path).expanduser()
    return path if path.is_absolute() else folder / path


def he_files(folder: Path, he_image, he_alignment) -> tuple[Path, Path | None] | None:
    """The H&E image and its alignment CSV to read, or ``None``; checked before any reading.

    ``he_image="auto"`` takes the one ``*he_image.ome.tif`` of the folder (none: no H&E);
    ``he_alignment="auto"`` takes the CSV named like the image, ``*he_imagealignment.csv``.
    A relative path is read from ``folder`` only, never from the working folder.
    """
    if he_image is None:
        return None
    if isinstance(he_image, str) and he_image == "auto":
        found = sorted(folder.glob(f"*{HE_SUFFIX}"))
        if not found:
            return None
        if len(found) > 1:
            raise ValueError(
                f"The Xenium folder {str(folder)!r} holds {len(found)} H&E images "
                f"({[p.name for p in found]}). Pass he_image= the one to read (or None).")
        image = found[0]
    else:
        image = _resolve(he_image, folder)
        if not image.is_file():
            raise FileNotFoundError(
                f"The H&E image {str(image)!r} does not exist. Check the path (a relative path "
                "is read from the Xenium folder, not the working folder: pass an absolute path "
                "for a file elsewhere), or pass he_image=None to read the Xenium output without "
                "it.")
    if he_alignment is None:
        return image, None
    if isinstance(he_alignment, str) and he_alignment == "auto":
        name = image.name[: -len(".ome.tif")] if image.name.endswith(".ome.tif") else image.stem
        alignment = image.parent / f"{name}{ALIGNMENT_SUFFIX}"
        if not alignment.is_file():
            raise FileNotFoundError(
                f"The H&E image {image.name!r} has no alignment file {alignment.name!r} next to "
                "it, so histoexpr cannot place it on the transcripts. Pass he_alignment= the "
                "alignment CSV exported from Xenium Explorer; he_alignment=None only if the "
                "image is already registered pixel for pixel onto the morphology image; or "
                "he_image=None to read the rest without it.")
    else:
        alignment = _resolve(he_alignment, folder)
        if not alignment.is_file():
            raise FileNotFoundError(
                f"The H&E alignment file {str(alignment)!r} does not exist. Check the path (the "
                "3x3 CSV exported from Xenium Explorer; a relative path is read from the Xenium "
                "folder, not the working folder), or pass he_image=None.")
    read_alignment(alignment)
    return image, alignment


def read_alignment(path: Path) -> np.ndarray:
    """The 3x3 matrix of an alignment CSV (H&E pixels to morphology pixels), checked."""
    import pandas as pd

    fix = ("Export the image alignment again from Xenium Explorer (a CSV of 3 rows of 3 "
           "numbers, the last row 0,0,1), or pass he_image=None.")
    try:
        matrix = pd.read_csv(path, header=None).to_numpy(dtype=np.float64)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as error:
        raise ValueError(f"The H&E alignment file {str(path)!r} is not a table of numbers "
                         f"({error}). {fix}") from error
    if matrix.shape != (3, 3):
        raise ValueError(f"The H&E alignment file {str(path)!r} holds a {matrix.shape[0]}x"
                         f"{matrix.shape[1]} table, not the 3x3 affine matrix. {fix}")
    if not np.isfinite(matrix).all() or not np.allclose(matrix[2], [0, 0, 1]) \
            or abs(np.linalg.det(matrix[:2, :2])) < 1e-12:
        raise ValueError(f"The H&E alignment file {str(path)!r} is not an invertible affine "
                         f"matrix (last row 0, 0, 1): {matrix.tolist()}. {fix}")
    return matrix


def read_he(image_path: Path, alignment_path: Path | None, mpp: float):
    """The H&E image in histoexpr's convention, from spatialdata-io's aligned-image reader.

    ``mpp`` is the morphology image's pixel size: the alignment maps H&E pixels to morphology
    pixels, so H&E pixels map to um by ``Scale(mpp) @ alignment``.
    """
    import tifffile
    from spatialdata_io import xenium_aligned_image

    with tifffile.TiffFile(image_path) as tif:  # only its shape: closed at once
        shape = tif.series[0].shape
    side = [s for s in shape if s > 4]
    if len(side) != 2 or len(shape) - len(side) not in (1, 2) or not any(s in (3, 4)
                                                                         for s in shape):
        raise ValueError(
            f"The H&E image {str(image_path)!r} has shape {tuple(shape)}; expected an RGB image "
            "(height, width, 3) or (3, height, width). Pass the post-Xenium H&E OME-TIFF, or "
            "he_image=None.")
    height, width = side
    factors = pyramid_factors(height, width)
    options = {"chunks": (3, min(CHUNK_PX, height), min(CHUNK_PX, width))}
    if factors:
        options["scale_factors"] = factors
    try:
        image = xenium_aligned_image(image_path, alignment_path, image_models_kwargs=options,
                                     rgba=True)
    except AssertionError as error:  # spatialdata-io checks the layout with asserts
        raise ValueError(f"spatialdata-io cannot read the H&E image {str(image_path)!r} of "
                         f"shape {tuple(shape)} ({error}). Pass an RGB OME-TIFF, or "
                         "he_image=None.") from error
    if "a" in _channels(image):
        image = _select(image, ["r", "g", "b"])
    matrix = np.eye(3) if alignment_path is None else read_alignment(alignment_path)
    return _axis_aligned(image, np.diag([mpp, mpp, 1.0]) @ matrix)


def _axis_aligned(image, pixels_to_um: np.ndarray):
    """Give ``image`` the transformation ``pixels_to_um``, resampled if it is not axis-aligned."""
    import spatialdata as sd
    from spatialdata.transformations import (
        Affine,
        Scale,
        Sequence,
        Translation,
        get_transformation,
        set_transformation,
    )

    linear = pixels_to_um[:2, :2]
    sx, sy = linear[0, 0], linear[1, 1]
    if abs(linear[0, 1]) < 1e-9 * abs(sx) and abs(linear[1, 0]) < 1e-9 * abs(sy) \
            and sx > 0 and sy > 0 and abs(sx - sy) <= 1e-3 * max(sx, sy):
        steps = [Scale([sx, sy], axes=("x", "y")),
                 Translation(pixels_to_um[:2, 2], axes=("x", "y"))]
        set_transformation(image, {COORDINATE_SYSTEM: Sequence(steps)}, set_all=True)
        return image
    mpp = float(np.sqrt(abs(np.linalg.det(linear))))
    angle = float(np.degrees(np.arctan2(linear[1, 0], linear[0, 0])))
    logger.info("The H&E alignment rotates (%.2f degrees), flips or shears the image: resampling "
                "it (lazily) onto an axis-aligned grid of %.4g um/px.", angle, mpp)
    to_pixels = np.diag([1 / mpp, 1 / mpp, 1.0]) @ pixels_to_um
    set_transformation(image, {"_he_pixels": Affine(to_pixels, input_axes=("x", "y"),
                                                    output_axes=("x", "y"))}, set_all=True)
    image = sd.transform(image, to_coordinate_system="_he_pixels")
    shift = np.asarray(get_transformation(image, "_he_pixels").to_affine_matrix(
        input_axes=("x", "y"), output_axes=("x", "y")))[:2, 2]
    steps = [Scale([mpp, mpp], axes=("x", "y")), Translation(shift * mpp, axes=("x", "y"))]
    set_transformation(image, {COORDINATE_SYSTEM: Sequence(steps)}, set_all=True)
    return image
