"""10x Genomics Visium (Space Ranger 1.x-3.x outputs) in micrometres."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._core.logs import log_added, logger
from .._core.validate import check_element_name, check_positive, check_store_name
from ._elements import (
    channel_names,
    check_mpp,
    existing_file,
    image_element_from_levels,
    numeric_table,
    read_plain_image,
    read_text_table,
    spot_elements,
)

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from spatialdata import SpatialData

_POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                     "pxl_col_in_fullres"]
_IMAGES = (("tissue_hires_image.png", "tissue_hires_scalef"),
           ("tissue_lowres_image.png", "tissue_lowres_scalef"))


def read_visium(path: str | Path, *, counts_file: str | None = None,
                spot_diameter_um: float = 55.0, image_key: str = "he") -> SpatialData:
    """Read a Space Ranger (1.x-3.x) Visium output folder, in micrometres.

    The counts and spot positions are read with :func:`spatialdata_io.visium` where it can (HDF5
    counts); for a Matrix Market folder (``filtered_feature_bc_matrix/``), which spatialdata-io
    0.7 does not read, histoexpr reads them itself. Both ``tissue_positions_list.csv``
    (Space Ranger 1.x, no header) and ``tissue_positions.csv`` (2.x-3.x) are supported.

    The pixel size comes from ``scalefactors_json.json``: a spot is ``spot_diameter_um`` wide
    and ``spot_diameter_fullres`` pixels of the full-resolution image, so the full resolution is
    ``spot_diameter_um / spot_diameter_fullres`` um/px, and the hires and lowres images are
    that divided by their scale factors.

    The image ``image_key`` is one multiscale image whose levels are the images Space Ranger
    wrote: ``scale0`` the hires image and ``scale1`` the lowres image (both are the same
    field of view, downscaled), or just one of them where the other is absent or blank (e.g. a
    placeholder). The full-resolution microscope image is not part of the Space Ranger output;
    read it with :func:`histoexpr.io.read_wsi` if needed.

    Parameters
    ----------
    path
        The Space Ranger output folder (holding ``spatial/`` and the counts).
    counts_file
        Name of the counts file (or Matrix Market folder) inside ``path``, one plain name (a
        path such as ``"../other_run/filtered_feature_bc_matrix.h5"`` is refused: the counts
        are this run's); by default ``*filtered_feature_bc_matrix.h5``, else the folder
        ``filtered_feature_bc_matrix/``.
    spot_diameter_um
        Diameter of a Visium spot in um (55 um).
    image_key
        Key of the image in ``sdata.images``.

    Returns
    -------
    A SpatialData with the image ``image_key``, the circles ``"spots"`` (radius
    ``spot_diameter_um / 2`` um, centres in um) and the table ``"table"`` (barcodes x genes, raw
    counts in ``X`` and ``layers["counts"]``, ``obs`` with ``in_tissue``, ``array_row``,
    ``array_col`` and ``spot_id``, centres in um in ``obsm["spatial"]``).

    """
    import pandas as pd
    from spatialdata import SpatialData

    if counts_file is not None:  # a file of this run's folder: never a path out of it
        counts_file = str(counts_file) if isinstance(counts_file, Path) else counts_file
        check_store_name("counts_file", counts_file,
                         what="counts file inside the Visium folder (e.g. "
                              "'raw_feature_bc_matrix.h5')")
    spot_diameter_um = check_positive("spot_diameter_um", spot_diameter_um, unit="um")
    check_element_name("image_key", image_key)
    path = existing_file(path, "Visium folder")
    spatial = path / "spatial"
    if not spatial.is_dir():
        inside = next((folder for folder in (path.parent, path.parent.parent)
                       if (folder / "spatial").is_dir()), None)
        hint = f" (e.g. {str(inside)!r}, which holds the spatial/ folder)" if inside else ""
        raise FileNotFoundError(
            f"{str(path)!r} has no 'spatial/' folder; pass the Space Ranger output folder{hint}, "
            "the one holding spatial/ and filtered_feature_bc_matrix.h5 or its folder."
        )
    scalefactors = json.loads(existing_file(
        spatial / "scalefactors_json.json", "scale factors",
        "a Visium output needs spatial/scalefactors_json.json").read_text())
    mpp_full = check_mpp(spot_diameter_um / float(scalefactors["spot_diameter_fullres"]), "mpp")

    adata, pixels = _read_counts_and_positions(path, counts_file)
    centres_um = pixels * mpp_full
    obs = adata.obs[[c for c in ("in_tissue", "array_row", "array_col") if c in adata.obs]]
    shapes, table = spot_elements(centres_um, adata.X, obs=pd.DataFrame(obs),
                                  var=adata.var.copy(), radius_um=spot_diameter_um / 2)
    log_added("shapes", "spots", f"{len(shapes)} spots")
    log_added("tables", "table", f"{table.n_obs} spots x {table.n_vars} genes")

    images = {}
    levels = []
    for name, factor_key in _IMAGES:
        file = spatial / name
        if not file.exists():
            continue
        image = read_plain_image(file, "Visium image")  # RGB or grey: an alpha channel dropped
        if image.min() == image.max():
            logger.warning("Ignoring %s: it is blank (every pixel %s), a placeholder.", name,
                           image.min())
            continue
        levels.append((image, mpp_full / float(scalefactors[factor_key])))
    if levels:
        import dask.array as da

        element = image_element_from_levels(
            [da.from_array(image, chunks=(image.shape[0], 1024, 1024)) for image, _ in levels],
            mpp=levels[0][1], channels=channel_names(levels[0][0].shape[0]))
        images[image_key] = element
        log_added("images", image_key, f"{len(levels)} level(s), {levels[0][1]:.4g} um/px")
    else:
        logger.warning("No usable tissue image in %s; the SpatialData has no image.", spatial)
    return SpatialData(images=images, shapes={"spots": shapes}, tables={"table": table})


def _read_counts_and_positions(path: Path, counts_file: str | None) -> tuple[AnnData, np.ndarray]:
    """Read counts (barcodes x genes) and spot centres ``(x, y)`` in full-resolution px."""
    h5 = sorted(path.glob("*filtered_feature_bc_matrix.h5")) if counts_file is None else []
    name = counts_file or (h5[0].name if h5 else "filtered_feature_bc_matrix")
    counts_path = existing_file(path / name, "counts",
                                "pass counts_file= (e.g. 'raw_feature_bc_matrix.h5')")
    if counts_path.is_file() and counts_path.suffix == ".h5":
        import warnings

        from spatialdata_io import visium

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sdata = visium(path, dataset_id="visium", counts_file=name)
        adata = sdata.tables["table"]
        # spatialdata-io stores (pxl_col_in_fullres, pxl_row_in_fullres) = (x, y) in obsm
        pixels = np.asarray(adata.obsm["spatial"], dtype=np.float64)
        missing = np.isnan(pixels).any(axis=1)
        if missing.all():
            raise ValueError(f"No barcode of {name!r} is in the tissue positions of {path}; pass "
                             "the counts and spatial/ folder of the same run.")
        if missing.any():
            logger.info("Dropped %d barcodes of %s without a tissue position.",
                        int(missing.sum()), name)
            adata, pixels = adata[~missing].copy(), pixels[~missing]
        return adata, pixels
    # spatialdata-io 0.7.1 raises NotImplementedError for Matrix Market counts (a folder with
    # matrix.mtx.gz, barcodes and features), which Space Ranger also writes: read them here.
    import gzip
    import zlib

    import scanpy as sc

    try:
        adata = sc.read_10x_mtx(counts_path, var_names="gene_symbols", make_unique=False)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError, ValueError) as error:
        raise ValueError(
            f"Could not read the Matrix Market counts in {str(counts_path)!r} "
            f"({type(error).__name__}: {error}): one of matrix.mtx.gz, barcodes.tsv.gz and "
            "features.tsv.gz is missing, truncated or not gzip-compressed. Copy the folder again "
            "from the Space Ranger output."
        ) from error
    if not adata.obs_names.is_unique:
        raise ValueError(f"The barcodes of {str(counts_path)!r} hold repeats; pass the counts of "
                         "one Space Ranger run.")
    positions = _read_positions(path / "spatial")
    known = adata.obs_names.isin(positions.index)
    if not known.any():
        raise ValueError(f"No barcode of {name!r} is in the tissue positions of {path}; pass the "
                         "counts and spatial/ folder of the same run.")
    if (~known).any():
        logger.info("Dropped %d barcodes of %s without a tissue position.", int((~known).sum()),
                    name)
        adata = adata[known].copy()
    n_unused = len(positions) - adata.n_obs
    logger.debug("%d positions have no counts (off the tissue or filtered out).", n_unused)
    positions = positions.loc[adata.obs_names]
    for column in ("in_tissue", "array_row", "array_col"):
        adata.obs[column] = positions[column].to_numpy()
    pixels = numeric_table(positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]],
                           "pixel columns of the tissue positions").to_numpy()
    finite = np.isfinite(pixels).all(axis=1)
    if not finite.all():
        raise ValueError(
            f"{int((~finite).sum())} barcodes of {name!r} have no finite pixel position in the "
            "tissue positions (e.g. "
            f"{list(adata.obs_names[~finite][:3])}); pass the complete spatial/ folder.")
    return adata, pixels


def _read_positions(spatial: Path) -> pd.DataFrame:
    """``tissue_positions.csv`` (header) or ``tissue_positions_list.csv`` (none), by barcode."""
    new, old = spatial / "tissue_positions.csv", spatial / "tissue_positions_list.csv"
    if new.exists():
        positions = read_text_table(new, "tissue positions")
    elif old.exists():
        positions = read_text_table(old, "tissue positions", header=None)
        if str(positions.iloc[0, 1]) == "in_tissue":  # some 1.x files do have a header
            positions = read_text_table(old, "tissue positions")
        else:
            positions.columns = _POSITION_COLUMNS
    else:
        raise FileNotFoundError(f"{str(spatial)!r} has neither tissue_positions.csv nor "
                                "tissue_positions_list.csv; pass a Space Ranger output folder.")
    return positions.set_index(positions.columns[0])
