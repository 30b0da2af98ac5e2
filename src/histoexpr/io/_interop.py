"""Other tools' files: TRIDENT/CLAM per-slide feature files (.h5) and HEST-1k samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._core.elements import square_shapes, tile_table
from .._core.files import Found, check_replaceable, content_digest, seal_of, written_beside
from .._core.logs import log_added, logger
from .._core.records import EmbeddingRecord, TileRecord, WriterRecord
from .._core.validate import (
    check_bool,
    check_element_name,
    check_positive,
    check_store_name,
)
from ._elements import check_mpp, existing_file, spot_elements

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: root attribute that marks the .h5 files :func:`write_trident_h5` wrote
WRITTEN_BY = "histoexpr.io.write_trident_h5"
_MAGNIFICATION_UM = 10.0  # um/px x magnification, the convention of TRIDENT and CLAM (20x: 0.5)


def read_trident_h5(
    path: str | Path,
    *,
    mpp: float | None = None,
    patch_size_level0: int | None = None,
    image_key: str = "he",
    key_added: str = "tiles",
    features_key: str | None = None,
) -> SpatialData:
    """Read a TRIDENT or CLAM per-slide feature file as tiles with their features.

    The file (TRIDENT's ``features_<encoder>/<slide>.h5``, CLAM's ``h5_files/<slide>.h5``)
    holds the datasets ``features`` (tiles x features) and ``coords`` (tiles x 2: the top-left
    corner ``x, y`` of each patch in level-0 pixels of the slide). TRIDENT stores the patch's
    footprint in level-0 pixels as the attribute ``patch_size_level0`` of ``coords`` (CLAM's
    patch files as ``patch_size`` at ``patch_level`` with its ``downsample``); the magnification
    attributes give the pixel size by the usual convention (10 um/px divided by the
    magnification: 0.5 um/px at 20x) where ``mpp`` is not given.

    Parameters
    ----------
    path
        The ``.h5`` file.
    mpp
        Pixel size of the slide's level 0 in um/px; from ``level0_magnification`` when ``None``.
    patch_size_level0
        Patch side in level-0 pixels, for files that do not record it (CLAM's feature files).
    image_key
        The image (in the SpatialData the tiles will join) that the tiles refer to, recorded in
        ``uns["tiles"]``.
    key_added
        Key of the tiles in ``sdata.shapes``; their table is ``f"{key_added}_table"``.
    features_key
        Key of the features in the table's ``obsm``; defaults to ``f"X_{encoder}"`` with the
        encoder's name found in the file's attributes (any character other than a letter, a
        digit, ``_``, ``-`` or ``.`` made ``_``), else ``"X_features"``.

    Returns
    -------
    A SpatialData with the square tiles ``key_added`` (micrometres, as :func:`histoexpr.pp.tile`
    makes them) and their table, whose ``obsm[features_key]`` holds the features and
    ``uns["embeddings"][features_key]`` where they come from. Add both to the slide's
    SpatialData (``sdata.shapes[k] = tiles.shapes[k]``...) to use them with ``hx.tl``.
    """
    import h5py
    from spatialdata import SpatialData

    if mpp is not None:
        mpp = check_positive("mpp", mpp, unit="um/px")
    if patch_size_level0 is not None:
        patch_size_level0 = check_positive("patch_size_level0", patch_size_level0, unit="px")
    for name, key in (("image_key", image_key), ("key_added", key_added)):
        check_element_name(name, key)
    if features_key is not None:  # an obsm key: written as a folder of the table's store
        check_element_name("features_key", features_key)
    path = existing_file(path, "feature file")
    try:
        with h5py.File(path, "r") as handle:
            missing = [name for name in ("features", "coords") if name not in handle]
            if missing:
                raise ValueError(
                    f"{path.name} has no dataset {missing} (it has "
                    f"{sorted(handle)}). Pass a TRIDENT or CLAM feature file "
                    "(datasets 'features' and 'coords')."
                )
            features = np.asarray(handle["features"], dtype=np.float32)
            coords = np.asarray(handle["coords"], dtype=np.float64)
            attrs = {**_attrs(handle), **_attrs(handle["features"]), **_attrs(handle["coords"])}
    except OSError as error:
        raise ValueError(
            f"{path} is not a readable HDF5 file ({error}). Pass a TRIDENT or CLAM feature file."
        ) from error
    if features.ndim == 3 and features.shape[0] == 1:  # some writers keep a batch axis
        features, coords = features[0], coords.reshape(-1, 2)
    if features.ndim != 2 or coords.shape != (len(features), 2):
        raise ValueError(
            f"{path.name}: features of shape {features.shape} and coords of shape "
            f"{coords.shape}; expected (tiles, features) and (tiles, 2)."
        )
    mpp = _level0_mpp(mpp, attrs, path.name)
    side_px = _patch_side(patch_size_level0, attrs, path.name)
    size_um = side_px * mpp
    patch_px = int(attrs.get("patch_size", side_px))
    encoder = str(
        attrs.get("encoder") or attrs.get("model_name") or attrs.get("name_encoder") or "features"
    )
    if features_key is None:  # the file's encoder name may hold '/' ('MahmoodLab/UNI')
        import re

        features_key = "X_" + re.sub(r"[^A-Za-z0-9_.\-]", "_", encoder)
    corners = coords * mpp
    boxes = np.column_stack([corners, corners + size_um])
    tile_ids = np.arange(len(features))
    import pandas as pd

    obs = pd.DataFrame({"tile_id": tile_ids}, index=pd.Index(tile_ids.astype(str)))
    record = TileRecord(image_key=image_key, size_px=patch_px, mpp=size_um / patch_px,
                        size_um=size_um, source=str(path))
    table = tile_table(obs, corners + size_um / 2, key_added, record)
    table.obsm[features_key] = features
    table.uns["embeddings"] = {
        features_key: EmbeddingRecord(
            encoder=encoder, fingerprint=f"{encoder}:file:{path.name}", image_key=image_key,
            mpp=size_um / patch_px, size_px=patch_px, n_off_image=0,
            n_features=int(features.shape[1]), source=str(path),
            writer=WriterRecord.now("hx.io.read_trident_h5", features_key),
        ).to_uns()
    }
    log_added("shapes", key_added, f"{len(features)} tiles of {size_um:.4g} um from {path.name}")
    log_added(
        "tables", f"{key_added}_table", f"obsm[{features_key!r}]: {features.shape[1]} features"
    )
    return SpatialData(
        shapes={key_added: square_shapes(boxes, tile_ids)}, tables={f"{key_added}_table": table}
    )


def write_trident_h5(
    sdata: SpatialData,
    path: str | Path,
    *,
    tiles_key: str = "he_tiles",
    features_key: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a tile table's features as a TRIDENT/CLAM per-slide feature file (.h5).

    ``features`` (tiles x features, float32) and ``coords`` (tiles x 2, int64: the top-left
    corner of each tile in level-0 pixels of its image), with TRIDENT's attributes on
    ``coords`` (``patch_size``, ``patch_size_level0``, ``patch_level`` 0,
    ``level0_magnification`` and ``target_magnification`` by the 10 um/px convention, ``mpp``
    and ``name``), so that TRIDENT's and CLAM's slide-level models read it.

    Parameters
    ----------
    sdata
        The slide, with the tiles ``tiles_key`` (from :func:`histoexpr.pp.tile`) and their image.
    path
        The ``.h5`` file to write.
    tiles_key
        Key of the tiles; their table is ``f"{tiles_key}_table"``.
    features_key
        Key of the features in the table's ``obsm``; may be left out where there is one.
    overwrite
        Replace ``path`` if it is a file this function wrote there, unchanged since (its root
        attribute ``histoexpr_seal`` records the digest of its datasets and attributes, and
        of its path). A file of any other origin, or one the user added a dataset or an
        attribute to, changed, copied or moved there since, is never replaced. The new file is
        written beside it and moved into its place at the end.

    Returns
    -------
    The path written.
    """
    check_bool("overwrite", overwrite)
    import h5py

    from ._region import get_pixel_size

    table_key = f"{tiles_key}_table"
    if table_key not in sdata.tables or "tiles" not in sdata.tables[table_key].uns:
        raise KeyError(
            f"No tile table {table_key!r} (tables: {sorted(sdata.tables)}). Tile the "
            "slide with hx.pp.tile and embed the tiles with hx.tl.embed first."
        )
    table = sdata.tables[table_key]
    keys = [k for k in table.obsm if k != "spatial"]
    if features_key is None:
        if len(keys) != 1:
            raise ValueError(
                f"{table_key} holds {len(keys)} feature matrices ({keys}); pass "
                "features_key= (or embed the tiles with hx.tl.embed first)."
            )
        features_key = keys[0]
    if features_key not in table.obsm:
        raise KeyError(f"{table_key} has no obsm[{features_key!r}] (it has {keys}).")
    path = Path(path)
    _check_writable(path, overwrite)
    info = table.uns["tiles"]
    level0_mpp = get_pixel_size(sdata, info["image_key"])
    corners = np.asarray(table.obsm["spatial"], dtype=float) - info["size_um"] / 2
    coords = np.rint(corners / level0_mpp).astype(np.int64)
    record = table.uns.get("embeddings", {}).get(features_key, {})
    with written_beside(path) as partial:  # a unique name beside it, swapped in at the end
        with h5py.File(partial, "w") as handle:
            handle.attrs["written_by"] = WRITTEN_BY
            handle.create_dataset("features", data=np.asarray(table.obsm[features_key], np.float32))
            handle["features"].attrs["encoder"] = str(record.get("encoder", features_key))
            dataset = handle.create_dataset("coords", data=coords)
            for name, value in {
                "patch_size": int(info["size_px"]),
                "patch_size_level0": int(round(info["size_um"] / level0_mpp)),
                "patch_level": 0,
                "mpp": float(level0_mpp),
                "name": path.stem,
                "level0_magnification": _MAGNIFICATION_UM / level0_mpp,
                "target_magnification": _MAGNIFICATION_UM / float(info["mpp"]),
            }.items():
                dataset.attrs[name] = value
        with h5py.File(partial, "r+") as handle:  # its seal: the digest of all it holds
            handle.attrs[_SEAL] = seal_of(_h5_digest(handle), path)
    logger.info(
        "Wrote %d tiles x %d features of %s to %s",
        len(coords),
        table.obsm[features_key].shape[1],
        table_key,
        path,
    )
    return path


def read_hest(
    root: str | Path, sample_id: str, *, mpp: float | None = None, image_key: str = "he"
) -> SpatialData:
    """Read one sample of HEST-1k: its whole-slide image, spots and expression.

    The layout of the HEST-1k download: ``st/<id>.h5ad`` (spots x genes, raw counts, spot
    centres in ``obsm["spatial"]`` in pixels of the full-resolution image),
    ``wsis/<id>.tif`` (pyramidal TIFF, read lazily) and ``metadata/<id>.json``
    (``pixel_size_um_estimated`` or ``pixel_size_um_embedded``, ``spot_diameter`` in um).

    Parameters
    ----------
    root
        The folder holding ``st/``, ``wsis/`` and ``metadata/``.
    sample_id
        The sample, e.g. ``"TENX95"``: the stem of its files, one plain name (a path is refused).
    mpp
        Pixel size of the image in um/px; defaults to the metadata's ``pixel_size_um_estimated``
        (else ``pixel_size_um_embedded``; a missing or NaN value is skipped).
    image_key
        Key of the image in ``sdata.images``.

    Returns
    -------
    A SpatialData with the image ``image_key``, the circles ``"spots"`` (radius
    ``spot_diameter / 2``) and the table ``"table"`` (raw counts, the h5ad's ``obs``; centres in
    um in ``obsm["spatial"]``), as :func:`histoexpr.io.read_visium` gives them. The h5ad's own
    ``obs`` columns ``region`` and ``spot_id``, if any, are kept as ``region_hest`` and
    ``spot_id_hest`` (the table's ``region`` and ``spot_id`` link it to the circles).
    """
    import anndata as ad

    from ._wsi import read_wsi

    check_store_name("sample_id", sample_id, what="HEST sample's files")  # one name, in root
    check_element_name("image_key", image_key)
    if mpp is not None:
        mpp = check_positive("mpp", mpp, unit="um/px")
    root = Path(root)
    meta_path = existing_file(root / "metadata" / f"{sample_id}.json", "HEST metadata")
    st_path = existing_file(root / "st" / f"{sample_id}.h5ad", "HEST expression")
    wsi_path = existing_file(root / "wsis" / f"{sample_id}.tif", "HEST image")
    meta = json.loads(meta_path.read_text())
    if mpp is None:
        mpp = next((_finite(meta.get(k)) for k in ("pixel_size_um_estimated",
                                                   "pixel_size_um_embedded")
                    if _finite(meta.get(k)) is not None), None)
        if mpp is None:
            raise ValueError(
                f"{meta_path.name} has no pixel_size_um_estimated or "
                "pixel_size_um_embedded (or only NaN); pass mpp= (um per pixel of the image)."
            )
    mpp = check_mpp(float(mpp))
    diameter = _finite(meta.get("spot_diameter"))
    if diameter is None:
        raise ValueError(
            f"{meta_path.name} has no spot_diameter (um; missing or NaN); HEST samples of spot "
            "technologies record it. For Xenium samples read the transcripts."
        )
    adata = ad.read_h5ad(st_path)
    if "spatial" not in adata.obsm:
        raise ValueError(f"{st_path.name} has no obsm['spatial'] (spot centres in pixels).")
    sdata = read_wsi(wsi_path, mpp=mpp, image_key=image_key)
    centres = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2] * mpp
    shapes, table = spot_elements(
        centres, adata.X, obs=_obs_kept(adata.obs, st_path.name), var=adata.var,
        radius_um=diameter / 2,
    )
    table.uns["hest"] = {k: v for k, v in meta.items() if isinstance(v, str | int | float)}
    sdata.shapes["spots"] = shapes
    sdata.tables["table"] = table
    log_added("shapes", "spots", f"{len(shapes)} spots")
    log_added("tables", "table", f"{table.n_obs} spots x {table.n_vars} genes")
    return sdata


def _finite(value) -> float | None:
    """``value`` as a float, or ``None`` where it is missing, not a number, NaN or infinite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _obs_kept(obs, name: str):
    """``obs`` with its columns ``region`` and ``spot_id`` renamed ``*_hest`` (logged).

    The table's ``region`` and ``spot_id`` link each row to its circle; the h5ad's own columns
    of those names are kept under new names rather than written over.
    """
    taken = [c for c in ("region", "spot_id") if c in obs.columns]
    if not taken:
        return obs
    renamed = {c: f"{c}_hest" for c in taken}
    logger.info("Renamed the obs column(s) %s of %s to %s: the table's own %s link its rows to "
                "the circles 'spots'.", taken, name, list(renamed.values()), taken)
    return obs.rename(columns=renamed)


def _attrs(node) -> dict:
    """The attributes of an HDF5 node; numbers and one-element arrays as Python scalars."""
    return {
        key: value.item() if isinstance(value, np.generic)
        or (isinstance(value, np.ndarray) and value.size == 1) else value
        for key, value in node.attrs.items()
    }


def _level0_mpp(mpp: float | None, attrs: dict, name: str) -> float:
    if mpp is not None:
        return check_mpp(mpp)
    for key in ("mpp", "level0_mpp"):
        if attrs.get(key):
            return check_mpp(float(attrs[key]))
    magnification = attrs.get("level0_magnification")
    if magnification and float(magnification) > 0:
        value = _MAGNIFICATION_UM / float(magnification)
        logger.info(
            "Pixel size of %s taken as %.4g um/px from level0_magnification %g (10 um/px "
            "/ magnification); pass mpp= for the slide's own.",
            name,
            value,
            float(magnification),
        )
        return value
    raise ValueError(
        f"{name} records neither mpp nor level0_magnification: pass mpp= (um per "
        "level-0 pixel of the slide, e.g. 0.25 at 40x)."
    )


def _patch_side(patch_size_level0: int | None, attrs: dict, name: str) -> float:
    if patch_size_level0 is not None:
        return float(patch_size_level0)
    if attrs.get("patch_size_level0"):
        return float(attrs["patch_size_level0"])
    if attrs.get("patch_size"):  # CLAM: patch_size at patch_level, whose downsample is given
        downsample = np.atleast_1d(attrs.get("downsample", 1.0)).astype(float)
        return float(attrs["patch_size"]) * float(downsample[0])
    raise ValueError(
        f"{name} records no patch size (patch_size_level0 or patch_size): pass "
        "patch_size_level0= (the patch side in level-0 pixels)."
    )


def _check_writable(path: Path, overwrite: bool) -> None:
    if not path.parent.is_dir():
        raise FileNotFoundError(f"The folder {path.parent} does not exist; create it first.")
    check_replaceable(path, overwrite=overwrite, written_by="hx.io.write_trident_h5",
                      ours=_ours)


def _ours(path: Path) -> Found | None:
    """What an HDF5 file written by :func:`write_trident_h5` says of itself (its root mark)."""
    import h5py

    with h5py.File(path, "r") as handle:
        if handle.attrs.get("written_by") != WRITTEN_BY:
            return None
        seal = handle.attrs.get(_SEAL)
        return Found(seal if isinstance(seal, str) else None, _h5_digest(handle))


#: the root attribute holding the seal of a file of :func:`write_trident_h5`
_SEAL = "histoexpr_seal"


def _h5_digest(handle) -> str:
    """The digest of every group, dataset and attribute of an open HDF5 file, its seal aside."""
    import h5py

    def attributes(node) -> dict:
        return {key: node.attrs[key] for key in node.attrs if not (node.name == "/"
                                                                    and key == _SEAL)}

    content = {"/": attributes(handle)}

    def visit(name: str, link) -> None:
        if not isinstance(link, h5py.HardLink):  # a link the user added is a change too
            content[name] = {"link": repr(getattr(link, "path", None)),
                             "file": repr(getattr(link, "filename", None))}
            return
        node = handle[name]
        is_data = isinstance(node, h5py.Dataset)
        content[name] = {"attrs": attributes(node), "kind": type(node).__name__,
                         "data": node[()] if is_data else None}

    handle.visititems_links(visit)
    return content_digest(content)
