"""10x Genomics Visium (Space Ranger 1.x-3.x outputs, Visium HD bins) in micrometres."""

from __future__ import annotations

import json
import re
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
from ._spot_grid import fit_array_grid

if TYPE_CHECKING:
    import pandas as pd
    from scipy import sparse
    from spatialdata import SpatialData

_POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                     "pxl_col_in_fullres"]
_PIXELS = ["pxl_col_in_fullres", "pxl_row_in_fullres"]  # (x, y) of the full-resolution image
#: the tissue positions of each Space Ranger version, the newest first
_POSITIONS = ("tissue_positions.parquet", "tissue_positions.csv", "tissue_positions_list.csv")
_IMAGES = (("tissue_hires_image.png", "tissue_hires_scalef"),
           ("tissue_lowres_image.png", "tissue_lowres_scalef"))
#: um between spots one array_col step apart in an array row: neighbours (2 steps) are 100 um
VISIUM_STEP_UM = 50.0
#: the spot diameters (um) whose pixels Space Ranger writes as spot_diameter_fullres: 65 um (a
#: theoretical spot, 10x's definition) and 70 um (what CytAssist outputs measure)
_DIAMETER_SPANS_UM = (65.0, 70.0)
#: how far (a fraction) two pixel sizes of one run may differ before a warning
_AGREE = 0.03
_LAYOUT = ("<folder>/spatial/ holding tissue_positions.csv (or tissue_positions_list.csv, "
           "optionally .gz), scalefactors_json.json and the tissue_*_image.png files, beside "
           "<folder>/filtered_feature_bc_matrix.h5 (a sample prefix such as 'GSM123_' may stay)")


def read_visium(path: str | Path, *, counts_file: str | None = None,
                spot_diameter_um: float = 55.0, image_key: str = "he") -> SpatialData:
    """Read a Space Ranger (1.x-3.x) Visium output folder, or a Visium HD bin folder, in um.

    The counts are ``*filtered_feature_bc_matrix.h5`` or the Matrix Market folder
    ``filtered_feature_bc_matrix/`` (gzipped or plain); the spot positions are
    ``tissue_positions_list.csv`` (Space Ranger 1.x), ``tissue_positions.csv`` (2.x-3.x), either
    gzipped, or ``tissue_positions.parquet`` (Visium HD). The files may carry a sample prefix,
    and a GEO download whose files all lie in one folder (``GSM1_tissue_positions_list.csv.gz``,
    ``GSM1_scalefactors_json.json.gz``, ``GSM1_filtered_feature_bc_matrix.h5``...) is read too.
    Features other than gene expression (e.g. ``Antibody Capture``) are left out, with a log.

    The pixel size of the full-resolution image comes from the spot array itself: a
    least-squares fit of the spots' pixel positions on their ``(array_col, array_row)`` (so a
    turned or mirrored array is fine) gives the pixels per array_col step, which is 50 um for
    Visium (neighbouring spots of a row are two steps, 100 um, apart) and one bin for Visium HD.
    ``microns_per_pixel`` of ``scalefactors_json.json``, where Space Ranger writes it, is used
    instead and checked against the grid; ``spot_diameter_fullres`` (the pixels of a 65 um spot,
    70 um in CytAssist outputs) is checked too. A disagreement of more than 3 % is a warning.
    The hires and lowres images are at that pixel size divided by their scale factors.

    A Visium HD bin folder (``binned_outputs/square_008um``: ``bin_size_um`` in the scale
    factors, or the folder's name) gives square bins ``bin_size_um`` wide, along the array,
    instead of circles. Pass one bin folder; the top ``outs/`` folder of an HD run is refused
    with the bin folders it holds.

    The image ``image_key`` is one multiscale image whose levels are the images Space Ranger
    wrote: ``scale0`` the hires image and ``scale1`` the lowres image (both are the same
    field of view, downscaled), or just one of them where the other is absent or blank (e.g. a
    placeholder). The full-resolution microscope image is not part of the Space Ranger output;
    read it with :func:`histoexpr.io.read_wsi` if needed.

    Parameters
    ----------
    path
        The Space Ranger output folder (holding ``spatial/`` and the counts), or a Visium HD bin
        folder, or a folder holding all of a sample's files (a GEO download).
    counts_file
        Name of the counts file (or Matrix Market folder) inside ``path``, one plain name (a
        path such as ``"../other_run/filtered_feature_bc_matrix.h5"`` is refused: the counts
        are this run's); by default ``*filtered_feature_bc_matrix.h5``, else the folder
        ``filtered_feature_bc_matrix/``.
    spot_diameter_um
        Diameter of the circles drawn for Visium spots in um (55 um); not used for the pixel
        size, nor for Visium HD bins.
    image_key
        Key of the image in ``sdata.images``.

    Returns
    -------
    A SpatialData with the image ``image_key``, the shapes ``"spots"`` (circles of radius
    ``spot_diameter_um / 2`` um, or the square HD bins, centres in um) and the table ``"table"``
    (barcodes x genes, raw counts in ``X`` and ``layers["counts"]``, ``obs`` with ``in_tissue``,
    ``array_row``, ``array_col`` and ``spot_id``, centres in um in ``obsm["spatial"]``).

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
    files = _layout(path)
    factors = _scale_factors(files["scalefactors_json.json"])
    positions = _read_positions(files["positions"])
    bin_um = _bin_size_um(path, factors)
    mpp_full, steps_px = _full_resolution_mpp(positions, factors, bin_um, files["positions"].name)

    x, barcodes, var, name = _read_counts(path, counts_file)
    x, var = _gene_expression_only(x, var, name)
    positions = _join(positions, barcodes, name, path)
    centres_um = positions[_PIXELS].to_numpy() * mpp_full
    corners = None if bin_um is None else _square_corners(centres_um, steps_px, bin_um)
    obs = positions[["in_tissue", "array_row", "array_col"]].copy()
    shapes, table = spot_elements(centres_um, x[barcodes.get_indexer(positions.index)],
                                  obs=pd.DataFrame(obs), var=var,
                                  radius_um=(bin_um or spot_diameter_um) / 2, corners_um=corners)
    what = "spots" if bin_um is None else f"{bin_um:g} um bins"
    log_added("shapes", "spots", f"{len(shapes)} {what}")
    log_added("tables", "table", f"{table.n_obs} {what} x {table.n_vars} genes")

    images = {}
    levels = []
    for image_name, factor_key in _IMAGES:
        file = files[image_name]
        if file is None:
            continue
        image = _read_image(file)  # RGB or grey: an alpha channel dropped
        if image.min() == image.max():
            logger.warning("Ignoring %s: it is blank (every pixel %s), a placeholder.", file.name,
                           image.min())
            continue
        if factor_key not in factors:
            logger.warning("Ignoring %s: the scale factors have no %s.", file.name, factor_key)
            continue
        levels.append((image, mpp_full / float(factors[factor_key])))
    if levels:
        import dask.array as da

        element = image_element_from_levels(
            [da.from_array(image, chunks=(image.shape[0], 1024, 1024)) for image, _ in levels],
            mpp=levels[0][1], channels=channel_names(levels[0][0].shape[0]))
        images[image_key] = element
        log_added("images", image_key, f"{len(levels)} level(s), {levels[0][1]:.4g} um/px")
    else:
        logger.warning("No usable tissue image in %s; the SpatialData has no image.",
                       files["where"])
    return SpatialData(images=images, shapes={"spots": shapes}, tables={"table": table})


def _layout(path: Path) -> dict[str, Path | None]:
    """The files of a run: in ``spatial/``, or all in ``path`` (a GEO download), by role."""
    if path.is_dir() and (path / "binned_outputs").is_dir():
        bins = sorted(p.name for p in (path / "binned_outputs").iterdir() if p.is_dir())
        example = str(path / "binned_outputs" / (bins[0] if bins else "square_008um"))
        raise FileNotFoundError(
            f"{str(path)!r} is the output of a Visium HD run, whose spots are the bins of "
            f"binned_outputs/ (it holds {bins}): pass one bin folder, e.g. "
            f"hx.io.read_visium({example!r}); spatialdata_io.visium_hd reads every bin size.")
    where = path / "spatial"
    if not where.is_dir():
        flat = (path.is_dir() and path.name != "spatial" and _find(path, "scalefactors_json.json")
                and any(_find(path, name) for name in _POSITIONS)
                and any(path.glob("*feature_bc_matrix*")))
        if not flat:
            inside = next((folder for folder in (path.parent, path.parent.parent)
                           if (folder / "spatial").is_dir()), None)
            hint = f" (e.g. {str(inside)!r}, which holds the spatial/ folder)" if inside else ""
            raise FileNotFoundError(
                f"{str(path)!r} has no 'spatial/' folder; pass the Space Ranger output "
                f"folder{hint}, the one holding spatial/ and filtered_feature_bc_matrix.h5 or its "
                f"folder. Files of a download go in this layout: {_LAYOUT}.")
        where = path
    files: dict[str, Path | None] = {"where": where}
    files["positions"] = next((found for name in _POSITIONS if (found := _find(where, name))),
                              None)
    for name in ("scalefactors_json.json", *(image for image, _ in _IMAGES)):
        files[name] = _find(where, name)
    for role, names in (("positions", " or ".join(_POSITIONS)),
                        ("scalefactors_json.json", "scalefactors_json.json")):
        if files[role] is None:
            raise FileNotFoundError(f"{str(where)!r} has no {names} (optionally .gz); a Visium "
                                    f"output needs it. Lay the files out as {_LAYOUT}.")
    return files


def _find(folder: Path, name: str) -> Path | None:
    """The one file of ``folder`` named ``name`` (or ``name.gz``), a prefix allowed."""
    found = sorted(p for p in folder.iterdir()
                   if p.is_file() and (p.name.endswith(name) or p.name.endswith(name + ".gz")))
    if len(found) > 1:
        raise ValueError(
            f"{str(folder)!r} holds {len(found)} files named *{name}: "
            f"{[p.name for p in found[:6]]}; which sample's is ambiguous. Put each sample's "
            f"files in a folder of their own: {_LAYOUT}.")
    return found[0] if found else None


def _open_text(path: Path) -> bytes:
    """The bytes of ``path``, gunzipped where its name ends in ``.gz``."""
    import gzip
    import zlib

    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path) as handle:
            return handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{str(path)!r} is not a complete gzip file ({error}); download it "
                         "again, or drop '.gz' from the name of a plain file.") from error


def _scale_factors(path: Path) -> dict:
    """``scalefactors_json.json`` (or ``.json.gz``) as a dict."""
    try:
        factors = json.loads(_open_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"The scale factors {str(path)!r} are not JSON ({error}); copy the "
                         "file again from the Space Ranger output.") from error
    if not isinstance(factors, dict):
        raise ValueError(f"The scale factors {str(path)!r} are not a JSON object.")
    return factors


def _bin_size_um(path: Path, factors: dict) -> float | None:
    """The bin size of a Visium HD bin folder (um), ``None`` for Visium spots."""
    if factors.get("bin_size_um") is not None:
        return check_positive("bin_size_um of the scale factors", float(factors["bin_size_um"]),
                              unit="um")
    match = re.fullmatch(r"square_(\d+)um", path.name)
    return float(match.group(1)) if match else None


def _full_resolution_mpp(positions: pd.DataFrame, factors: dict, bin_um: float | None,
                         name: str) -> tuple[float, np.ndarray | None]:
    """um/px of the full-resolution image, and the pixel step of each array coordinate."""
    step_um = bin_um or VISIUM_STEP_UM
    try:
        coef, _ = fit_array_grid(positions[["array_col", "array_row"]].to_numpy(float),
                                 positions[_PIXELS].to_numpy(float), what=name)
        steps_px, by_grid, reason = coef[:2], step_um / float(np.linalg.norm(coef[0])), ""
    except ValueError as error:
        steps_px, by_grid, reason = None, None, str(error)
    source = "microns_per_pixel" if factors.get("microns_per_pixel") is not None else "the array"
    if factors.get("microns_per_pixel") is not None:
        mpp = check_mpp(factors["microns_per_pixel"], "microns_per_pixel of the scale factors")
        if by_grid is not None and abs(by_grid / mpp - 1) > _AGREE:
            logger.warning(
                "The scale factors give %.4g um/px (microns_per_pixel), but the spot array of %s "
                "gives %.4g um/px (%g um per array_col step): they differ by %.0f%%. Used "
                "microns_per_pixel; check that the positions and scale factors are of one run.",
                mpp, name, by_grid, step_um, 100 * abs(by_grid / mpp - 1))
    elif by_grid is not None:
        mpp = check_mpp(by_grid, "the pixel size from the spot array")
    else:
        raise ValueError(
            f"Cannot tell the pixel size of this run: {reason} The scale factors have no "
            "microns_per_pixel either. Pass the complete tissue positions (every spot of the "
            "array, as Space Ranger writes them), or write the full-resolution pixel size (um/px) "
            "as 'microns_per_pixel' into scalefactors_json.json.")
    logger.debug("Full-resolution pixel size %.5g um/px (array: %s um/px; scale factors: %s).",
                 mpp, by_grid, factors.get("microns_per_pixel"))
    diameter_px = factors.get("spot_diameter_fullres")
    if diameter_px:
        spans = float(diameter_px) * mpp
        expected = (bin_um,) if bin_um else _DIAMETER_SPANS_UM
        nearest = min(expected, key=lambda um: abs(spans / um - 1))
        if abs(spans / nearest - 1) > _AGREE:
            logger.warning(
                "spot_diameter_fullres (%.4g px) spans %.1f um at %.4g um/px (from %s), where "
                "Space Ranger writes the pixels of a %s um %s: the scale factors and the tissue "
                "positions may be of different runs or images. The micrometres follow %s.",
                float(diameter_px), spans, mpp, source, " or ".join(f"{um:g}" for um in expected),
                "bin" if bin_um else "spot", source)
    return mpp, steps_px


def _square_corners(centres_um: np.ndarray, steps_px: np.ndarray | None,
                    bin_um: float) -> np.ndarray:
    """The 4 corners (um) of square bins ``bin_um`` wide, turned as the array is."""
    if steps_px is None:
        axes = np.eye(2)
    else:
        axes = steps_px / np.linalg.norm(steps_px, axis=1, keepdims=True)
    half = 0.5 * bin_um * axes
    offsets = np.stack([-half[0] - half[1], half[0] - half[1], half[0] + half[1],
                        half[1] - half[0]])
    return centres_um[:, None, :] + offsets[None]


def _read_counts(path: Path, counts_file: str | None
                 ) -> tuple[sparse.csr_matrix, pd.Index, pd.DataFrame, str]:
    """Counts (barcodes x features), the barcodes, the features and the counts' name."""
    import pandas as pd

    if counts_file is None:
        h5 = sorted(p.name for p in path.glob("*filtered_feature_bc_matrix.h5"))
        if len(h5) > 1:
            raise ValueError(f"{str(path)!r} holds {len(h5)} counts files {h5}; pass "
                             "counts_file= (the name of this sample's).")
        name = h5[0] if h5 else "filtered_feature_bc_matrix"
    else:
        name = counts_file
    counts_path = existing_file(path / name, "counts",
                                "pass counts_file= (e.g. 'raw_feature_bc_matrix.h5')")
    if counts_path.is_file():
        import warnings

        import scanpy as sc

        try:
            with warnings.catch_warnings():  # AnnData's note on repeated gene names: see below
                warnings.simplefilter("ignore")
                adata = sc.read_10x_h5(counts_path, gex_only=False)
        except (OSError, KeyError, ValueError) as error:
            raise ValueError(f"Could not read the counts {str(counts_path)!r} ({error}); pass "
                             "a 10x feature-barcode matrix .h5 (or its Matrix Market "
                             "folder).") from error
        x, barcodes, var = adata.X, adata.obs_names, adata.var.copy()
        var.index = pd.Index(var.index.astype(str))
    else:
        x, barcodes, var = _read_matrix_market(counts_path)
    if not barcodes.is_unique:
        raise ValueError(f"The barcodes of {str(counts_path)!r} hold repeats; pass the counts of "
                         "one Space Ranger run.")
    return x, barcodes, var, name


def _read_matrix_market(folder: Path) -> tuple[sparse.csr_matrix, pd.Index, pd.DataFrame]:
    """A 10x Matrix Market folder as counts, barcodes and features.

    ``matrix.mtx``, ``barcodes.tsv`` and ``features.tsv`` (``genes.tsv`` of Cell Ranger 2),
    gzipped or not.
    """
    import gzip
    import zlib

    import pandas as pd
    from scipy import io, sparse

    def one(*names: str) -> Path:
        for candidate in (folder / f"{n}{gz}" for n in names for gz in (".gz", "")):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"{str(folder)!r} has no {names[0]}.gz (nor {names[0]}); a Matrix Market counts "
            "folder holds matrix.mtx.gz, barcodes.tsv.gz and features.tsv.gz.")

    matrix, barcodes_path, features_path = one("matrix.mtx"), one("barcodes.tsv"), one(
        "features.tsv", "genes.tsv")
    try:
        x = sparse.csr_matrix(io.mmread(matrix).T)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError, ValueError) as error:
        raise ValueError(
            f"Could not read the Matrix Market counts {str(matrix)!r} ({type(error).__name__}: "
            f"{error}): the file is truncated, or named .gz but not gzip-compressed (drop '.gz' "
            "from a plain file's name). Copy the folder again from the Space Ranger output."
        ) from error
    barcodes = read_text_table(barcodes_path, "barcodes", header=None, sep="\t", dtype=str)
    features = read_text_table(features_path, "features", header=None, sep="\t", dtype=str)
    var = pd.DataFrame({"gene_ids": features[0].to_numpy()},
                       index=pd.Index(features[min(1, features.shape[1] - 1)].to_numpy()))
    if features.shape[1] > 2:
        var["feature_types"] = features[2].to_numpy()
    if x.shape != (len(barcodes), len(var)):
        raise ValueError(
            f"{matrix.name} holds {x.shape[1]} features x {x.shape[0]} barcodes, but "
            f"{features_path.name} names {len(var)} and {barcodes_path.name} {len(barcodes)}; "
            "pass the three files of one run.")
    return x, pd.Index(barcodes[0].to_numpy()), var


def _gene_expression_only(x, var: pd.DataFrame, name: str):
    """Leave out features of other types (antibodies, CRISPR guides), saying how many."""
    if "feature_types" not in var:
        return x, var
    types = var["feature_types"].astype(str)
    genes = (types == "Gene Expression").to_numpy()
    if genes.all() or not genes.any():
        return x, var
    left = types[~genes].value_counts()
    logger.info("Left out %d features of %s that are not gene expression (%s); read them with "
                "scanpy.read_10x_h5(..., gex_only=False) if needed.", int((~genes).sum()), name,
                ", ".join(f"{kind}: {n}" for kind, n in left.items()))
    return x[:, np.flatnonzero(genes)], var[genes].copy()


def _join(positions: pd.DataFrame, barcodes: pd.Index, name: str, path: Path) -> pd.DataFrame:
    """The positions of the barcodes that have counts, in the counts' order, with logs."""
    known = barcodes.isin(positions.index)
    if not known.any():
        raise ValueError(f"No barcode of {name!r} is in the tissue positions of {path}; pass the "
                         "counts and spatial/ folder of the same run.")
    if (~known).any():
        logger.info("Dropped %d barcodes of %s without a tissue position.", int((~known).sum()),
                    name)
    logger.debug("%d positions have no counts (off the tissue or filtered out).",
                 len(positions) - int(known.sum()))
    positions = positions.loc[barcodes[known]]
    finite = np.isfinite(positions[_PIXELS].to_numpy()).all(axis=1)
    if not finite.all():
        raise ValueError(
            f"{int((~finite).sum())} barcodes of {name!r} have no finite pixel position in the "
            f"tissue positions (e.g. {list(positions.index[~finite][:3])}); pass the complete "
            "spatial/ folder.")
    off = int((positions["in_tissue"] == 0).sum())
    if off:
        logger.info("%d of %d spots of %s are off the tissue (in_tissue = 0), as in raw counts; "
                    "keep table.obs['in_tissue'] == 1 for the tissue only.", off, len(positions),
                    name)
    return positions


def _read_positions(path: Path) -> pd.DataFrame:
    """Tissue positions (``.parquet``, ``.csv`` with a header, ``_list.csv`` without; ``.gz``)."""
    import pandas as pd

    plain = path.name.removesuffix(".gz")
    if plain.endswith(".parquet"):
        try:
            positions = pd.read_parquet(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"Could not read the tissue positions {str(path)!r} ({error}); "
                             "copy the file again from the Space Ranger output.") from error
    else:
        positions = read_text_table(path, "tissue positions",
                                    header=None if plain.endswith("_list.csv") else "infer")
        if "in_tissue" not in positions.columns:
            if str(positions.iloc[0, 1]) == "in_tissue":  # some 1.x files do have a header
                positions = read_text_table(path, "tissue positions")
            elif positions.shape[1] == len(_POSITION_COLUMNS):
                positions.columns = _POSITION_COLUMNS
    missing = [c for c in _POSITION_COLUMNS[1:] if c not in positions.columns]
    if missing:
        raise ValueError(f"The tissue positions {str(path)!r} lack the column(s) {missing} (they "
                         f"hold {[str(c) for c in positions.columns][:8]}); pass Space Ranger's "
                         "file.")
    positions = positions.set_index(positions.columns[0])
    positions.index = positions.index.astype(str)
    if not positions.index.is_unique:
        raise ValueError(f"The tissue positions {str(path)!r} hold repeated barcodes; pass "
                         "Space Ranger's file of one run.")
    positions[_PIXELS] = numeric_table(positions[_PIXELS], "pixel columns of the tissue positions")
    return positions


def _read_image(path: Path) -> np.ndarray:
    """A Visium image as ``(c, y, x)``; a gzipped one (a GEO download) unpacked first."""
    if path.suffix != ".gz":
        return read_plain_image(path, "Visium image")
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / path.name.removesuffix(".gz")
        plain.write_bytes(_open_text(path))
        return read_plain_image(plain, "Visium image")
