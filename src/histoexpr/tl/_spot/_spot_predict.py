"""Prediction of the spot regressor on every tile of a section (``hx.tl.predict``).

The model is one trained by ``hx.tl.fit(..., model="spot_regressor")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..._core.image import check_pixel_size_stated, image_levels
from ..._core.image_facts import image_coverage, image_fingerprint, source_of
from ..._core.logs import log_added, logger
from ..._core.ownership import (
    check_key_writable,
    replace_elements,
    require_element,
    undone_on_error,
)
from ..._core.records import TileRecord, made_within
from ..._core.seeds import resolve_device
from ..._core.spatial_uns import add_spatial_uns
from ..._core.validate import check_element_name, check_fraction, check_int, check_positive
from .._features._embed import encoder_fingerprint
from ._calibration import annotate
from ._conformal import DEFAULT_LEVEL, half_width
from ._spot_features import section_features
from ._spot_inputs import MODEL, STEP, WITHIN, _check_image_mpp, _tiles_at

if TYPE_CHECKING:

    import pandas as pd
    from anndata import AnnData
    from spatialdata import SpatialData

    from ...models import Network


def predict(
    model: Network,
    sdata: SpatialData,
    *,
    tiles_key: str | None = None,
    image_key: str | None = None,
    stride_um: float | None = None,
    min_tissue: float = 0.5,
    batch_size: int = 64,
    device: str | None = None,
    level: float | None = None,
    library_size: float | Literal["auto"] | None = "auto",
    name: str | None = None,
    key_added: str | None = None,
    overwrite: bool = False,
    client: Any = None,
) -> AnnData | pd.DataFrame:
    """Predict expression on every tile of a section, with or without spots, or of a cohort.

    Tiles of the model's ``size_um`` and pixel size are used: those under ``tiles_key`` if they
    exist (their width must match the model's; if their pixel size differs they are read at the
    model's, with a log line), else a grid over the tissue is made there with ``stride_um``
    (finer than the spot spacing if asked: tiles then overlap). If the image's own pixel size is
    coarser than the model's, tiles are upsampled (logged).

    Parameters
    ----------
    model
        A spot regressor from ``hx.tl.fit(..., model="spot_regressor")`` or a model file.
    sdata
        The section: an H&E image is enough. Or a cohort of slide files on disk
        (:func:`histoexpr.io.read_cohort`): each slide is opened lazily, tiled on its tissue
        and predicted as one section would be, and its table written to the slide's store
        (``cohort.store(slide_id).prediction(key_added)``; ``cohort[slide_id].tables``). The
        run resumes: a slide whose store holds that table, made by the same model from the same
        slide file (its path and content: size and digest) with the same options, is skipped;
        one made otherwise is an error unless ``overwrite=True``. Every slide's file, store and
        keys are checked before the first slide is predicted.
    tiles_key
        Key of the tiles to predict on; defaults to ``f"{image_key}_expr_tiles"``, made as a grid
        if absent.
    image_key
        Key of the image; defaults to the key the model was trained with.
    stride_um
        Distance between grid tiles in um when tiles are made; defaults to the patch width.
    min_tissue
        Smallest tissue fraction of a grid tile when tiles are made.
    batch_size
        Tiles per forward pass.
    device
        Torch device; ``None`` uses ``hx.settings.device``.
    level
        Level of the prediction intervals (``layers["lower"]``, ``layers["upper"]``): one of
        the levels the model keeps, 0.5, 0.8, 0.9 or 0.95; ``None``: 0.9 where the model keeps
        intervals. A level given to a model without intervals (no calibration) is an error.
    library_size
        The sequencing depth the intervals speak of, for a model whose intervals depend on it
        (``uns["prediction"]["intervals"]["kind"] == "depth"``: a spot measured with fewer
        UMIs is noisier, so its interval is wider). A spot's library size is its counts over
        all genes. ``"auto"``: a tile centred on a spot of the section's counts table (the
        table the model was trained with, e.g. ``"table"``) takes that spot's library size,
        so its interval is about the value measured there; every other tile (grid tiles, an
        H&E-only slide) takes the reference, the geometric mean of the calibration spots'
        library sizes. A number: that library size (UMIs per spot) for every tile, e.g. the
        depth of the assay to compare with. ``None``: the reference for every tile. A library
        size above the deepest calibration spot's gets that spot's width (never narrower).
        Each tile's library size is in ``obs["interval_library_size"]``. A number given to a model
        whose intervals do not depend on depth is an error.
    name
        The slide's name in the guard's warning; ``None`` uses the file the section was read
        from (a .zarr store, or the slide file :func:`histoexpr.io.read_wsi` read, while the
        image holds its pixels), or the image key.
    key_added
        Key of the table of predictions; defaults to ``f"{tiles_key}_expression"``.
    overwrite
        Replace an existing table ``key_added`` that an earlier ``predict`` of a spot regressor
        wrote under that key (never an element of another origin, nor the output of another
        kind of model); the new table is made before the old one is replaced.
    client
        A cohort: a ``dask.distributed.Client`` to predict the slides on its workers
        (``client.map``); ``None`` predicts them here, one after the other.

    Returns
    -------
    A cohort: one row per slide (index: slide id) with ``status`` (``"computed"``,
    ``"skipped"`` or ``"failed"``: a slide that could not be predicted is warned of and the
    others go on; a rerun tries it again), ``n_tiles``, ``seconds``, ``worker``, the slide's
    guard summary, ``fraction_out_of_range`` and ``warns`` (``uns["prediction"]["guard"]`` of
    its table: the slides unlike the training data at a glance), and ``error`` (why a slide
    failed); the tables are in the stores. Every slide failing is an error.
    A section:
    The table of predictions (also added as ``sdata.tables[key_added]``): tiles x genes,
    log1p-normalised expression in ``X``, the tile table's ``obs`` (``tile_id``, and ``spot_id``
    for spot-centred tiles), tile centres in um in ``obsm["spatial"]``, annotating the tile
    shapes (``region`` = ``tiles_key``, ``instance_key="tile_id"``), and scanpy's
    ``uns["spatial"]`` (a copy of the image, at most 2000 px long, and its scale factors to um):
    ``sc.pl.spatial``, ``sq.pl.spatial_scatter`` and ``hx.pl.spots`` draw it over the tissue.

    A model calibrated in ``fit`` (head routes, ``calibrate=True``, the default) also gives:
    the domain-shift guard of each tile in ``obs`` (``guard_score``; ``guard_percentile``, its
    percentile among held-out training tiles; ``out_of_range``, above the 99th), a
    ``UserWarning`` naming the slide when more than half its tiles are out of range; split-
    conformal intervals at ``level`` in ``layers["lower"]`` and ``layers["upper"]``, at the
    library size of ``obs["interval_library_size"]`` (see ``library_size``); each gene's inner
    Pearson in ``var["inner_pearson"]``. ``uns["prediction"]`` states the units and
    normalisation of ``X``, the genes' scores, the training sections, the tile size and pixel
    size, the encoder and its fingerprint, the guard's summary of the slide and the intervals'
    level and library sizes (each gene's mean half-width in ``var["interval_half_width"]``;
    ``"available": False`` and why, for a model without a calibration). The page "What a
    prediction means" says what these mean and do not mean.

    """
    from ...io import Cohort

    if isinstance(sdata, Cohort):
        from ._spot_cohort import predict_cohort

        return predict_cohort(model, sdata, tiles_key=tiles_key, image_key=image_key,
                              stride_um=stride_um, min_tissue=min_tissue, batch_size=batch_size,
                              device=device, key_added=key_added, overwrite=overwrite,
                              client=client, level=level, library_size=library_size)
    if client is not None:
        raise ValueError("client= runs the slides of a cohort on dask workers; a single "
                         "section is predicted here: drop client=.")
    metadata = getattr(model, "metadata", {}) or {}
    if metadata.get("model") != "spot_regressor":
        raise ValueError("This network is not a spot regressor; train one with "
                         "hx.tl.fit(..., model='spot_regressor').")
    image_key = metadata["image_key"] if image_key is None else image_key
    require_element(sdata, image_key, "images")
    tiles_key = check_element_name("tiles_key", f"{image_key}_expr_tiles" if tiles_key is None
                                   else tiles_key)
    key_added = f"{tiles_key}_expression" if key_added is None else key_added
    check_key_writable(sdata, key_added, overwrite=overwrite, step=STEP, model=MODEL,
                       group=key_added)
    level = check_options(metadata, level=level, batch_size=batch_size, device=device,
                          library_size=library_size)
    mpp = metadata["mpp"]
    # everything that can be refused is checked before anything is written
    check_pixel_size_stated(sdata, image_key)
    _check_channels(sdata, image_key, model)
    _check_image_mpp(sdata, image_key, mpp)
    if metadata["route"] != "cnn":
        _check_encoder_unchanged(metadata)
    if tiles_key in sdata.shapes and stride_um is not None:
        raise ValueError(f"Tiles {tiles_key!r} exist already, so stride_um cannot apply; pass a "
                         "new tiles_key to make grid tiles at that stride.")
    with undone_on_error(sdata):  # the tissue map and tiles made here go if a check refuses
        return _predict(model, sdata, metadata, tiles_key=tiles_key, image_key=image_key,
                        stride_um=stride_um, min_tissue=min_tissue, batch_size=batch_size,
                        device=device, level=level, library_size=library_size, name=name,
                        key_added=key_added, overwrite=overwrite)


def check_options(metadata: Mapping[str, Any], *, level: float | None, batch_size: Any,
                  device: str | None, library_size: Any = "auto") -> float:
    """Refuse a bad level, batch size, device or library size before any work.

    Returns the level to use.
    """
    check_int("batch_size", batch_size, minimum=1)
    resolve_device(device)
    calibration = metadata.get("calibration") or {}
    check_library_size(calibration, library_size)
    if level is None:
        return DEFAULT_LEVEL
    level = check_fraction("level", level)
    if not calibration.get("available"):
        why = calibration.get("reason") or ("trained with calibrate=False, by an older "
                                            "histoexpr, or by the 'cnn' route")
        raise ValueError(
            f"level={level:g} asks for prediction intervals, but this model keeps none ({why})."
            " Leave level=None (the prediction then has no intervals), or retrain the model "
            "with a head route and calibrate=True to have them.")
    half_width(calibration["intervals"], level)  # a level the model keeps, or refused
    return level


def check_library_size(calibration: Mapping[str, Any], library_size: Any) -> None:
    """``"auto"``, ``None`` or a positive number; a number only for depth-aware intervals."""
    if library_size is None or (isinstance(library_size, str) and library_size == "auto"):
        return
    if isinstance(library_size, str | bool) or not isinstance(library_size, int | float
                                                               | np.number):
        raise ValueError(
            f"library_size={library_size!r}: pass a number of UMIs per spot (e.g. 5000), "
            "'auto' (each spot's own where the section has counts, else the calibration's "
            "reference) or None (the reference).")
    check_positive("library_size", library_size, unit="UMIs per spot")
    kind = (calibration.get("intervals") or {}).get("kind", "pooled")
    if not calibration.get("available") or kind != "depth":
        raise ValueError(
            f"library_size={library_size:g} asks for intervals at a sequencing depth, but this "
            "model's intervals do not depend on depth ("
            + (f"interval method {kind!r}" if calibration.get("available") else
               "it keeps no intervals")
            + "). Leave library_size='auto', or retrain the model with this histoexpr to have "
            "depth-aware intervals.")


def tile_library_sizes(sdata, table, metadata: Mapping[str, Any],
                       library_size: Any) -> np.ndarray | None:
    """The library size each tile's interval is asked at; ``None``: the reference for all.

    ``"auto"``: the spot's own for a tile centred on a spot of the counts table the model was
    trained with (``metadata["table_key"]``, ``"table"`` for older models), NaN (the reference)
    for every other tile; the reference for all where that table holds no raw counts (logged).
    """
    from ..._core.expression import library_sizes

    intervals = (metadata.get("calibration") or {}).get("intervals") or {}
    if library_size is None or intervals.get("kind") != "depth":
        return None
    if not isinstance(library_size, str):
        return np.full(table.n_obs, float(library_size))
    key = metadata.get("table_key", "table")
    counts = sdata.tables.get(key)
    if counts is None or "spot_id" not in table.obs or "spot_id" not in counts.obs:
        return None
    try:
        sizes = library_sizes(counts)
    except ValueError as error:  # e.g. log-normalised values: no depth to read
        logger.info("Intervals at the reference library size: the table %r gives no spot's "
                    "depth (%s).", key, error)
        return None
    own = dict(zip(counts.obs["spot_id"].to_numpy(), sizes, strict=True))
    values = np.array([own.get(spot, np.nan) for spot in table.obs["spot_id"].to_numpy()],
                      dtype=np.float64)
    values[~(values > 0)] = np.nan  # a spot without counts: the reference
    return None if np.isnan(values).all() else values


def _predict(model, sdata, metadata, *, tiles_key, image_key, stride_um, min_tissue, batch_size,
             device, level, library_size, name, key_added, overwrite):
    from ...pp import tile

    size_um, mpp = metadata["size_um"], metadata["mpp"]
    if tiles_key not in sdata.shapes:
        with made_within(WITHIN):
            tile(sdata, image_key, size_um=size_um, mpp=mpp,
                 stride_um=size_um if stride_um is None else stride_um, min_tissue=min_tissue,
                 key_added=tiles_key)
    tiles = _tiles_at(sdata, tiles_key, size_um=size_um, mpp=mpp, image_key=image_key)
    tile_table = tiles.tables[f"{tiles_key}_table"]
    coverage = image_coverage(tiles, image_key, np.asarray(tile_table.obsm["spatial"]),
                              tile_table.uns["tiles"]["size_um"])
    on_image = coverage > 1e-9
    if not on_image.any():
        raise ValueError(f"All {on_image.size} tiles {tiles_key!r} lie off the image "
                         f"{image_key!r}; tile this image or give the image they were made on.")
    unscaled = None  # the encoder's features of the tiles, for the guard
    if metadata["route"] == "cnn":
        from torch.utils.data import Subset

        from ...pp import TileDataset
        from .._features._embed import encode

        if not on_image.all():
            logger.warning("%d of %d tiles %r lie wholly off the image %r: they have no pixels "
                           "and are left out of the predictions.", int((~on_image).sum()),
                           on_image.size, tiles_key, image_key)
        dataset = Subset(TileDataset(tiles, tiles_key, image_key=image_key),
                         np.flatnonzero(on_image).tolist())
        values = encode(model, dataset, batch_size=batch_size, device=resolve_device(device),
                        normalisation=metadata.get("normalisation"), desc="predict expression")
    else:
        import torch

        encoder, features_key, transform = (metadata["encoder"], metadata["features_key"],
                                            None)
        expected = metadata.get("features")
        if metadata.get("encoder_in_model"):  # a CNN made by fit travels inside the model
            encoder = model.encoder
            encoder.metadata = {"normalisation": metadata.get("encoder_normalisation")}
            model = model.head
        if metadata.get("stain"):  # the section's own stain, mapped onto the training reference
            from ...pp import stain_normaliser

            transform = stain_normaliser(tiles, tiles_key, reference=metadata["stain"])
            features_key = f"{features_key}_{metadata['stain']['method']}_{transform.digest}"
        features, unscaled = (section_features(
            tiles, tiles_key, encoder=encoder, features_key=features_key,
            context_um=metadata.get("context_um") or None if head_input else None,
            standardise=metadata.get("standardise_sections", False) and head_input,
            image_key=image_key, expected=expected, batch_size=batch_size, device=device,
            transform=transform)[0][on_image] for head_input in (True, False))
        expected = model.get_config().get("n_features")
        if expected is not None and features.shape[1] != expected:
            raise ValueError(f"The tiles' features have {features.shape[1]} values but the model "
                             f"takes {expected}: they were made by another encoder or from an "
                             "image of another kind. Predict on an image like the training ones.")
        if not on_image.all():
            logger.warning("%d of %d tiles %r lie wholly off the image %r: they are left out of "
                           "the predictions.", int((~on_image).sum()), on_image.size, tiles_key,
                           image_key)
        model = model.to("cpu").eval()
        with torch.inference_mode():
            values = model(torch.from_numpy(features)).numpy()
    _check_finite(values, tiles_key, image_key)
    table = _prediction_table(tile_table[on_image], values, metadata["genes"], tiles_key,
                              image={"key": image_key,
                                     "fingerprint": image_fingerprint(sdata, image_key)})
    add_spatial_uns(table, sdata, image_key, spot_diameter_um=tile_table.uns["tiles"]["size_um"])
    annotate(table, metadata, unscaled, level=level, name=_slide_name(sdata, image_key, name),
             library_size=tile_library_sizes(sdata, table, metadata, library_size))
    replace_elements(sdata, [("tables", key_added, table)], overwrite=overwrite, step=STEP,
                     model=MODEL, group=key_added)
    log_added("tables", key_added, f"{values.shape[0]} tiles x {values.shape[1]} genes")
    return sdata.tables[key_added]


def _check_finite(values: np.ndarray, tiles_key: str, image_key: str) -> None:
    """Refuse predictions that are NaN or infinite: they would pass for numbers downstream."""
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise ValueError(
            f"The predictions of {int(bad.sum())} of {bad.size} tiles {tiles_key!r} are NaN or "
            f"infinite: their pixels (or features) are not finite numbers, e.g. NaN pixels in "
            f"the image {image_key!r}. Replace the non-finite pixels of the image (or predict "
            "on tiles away from them); nothing was written.")


def _slide_name(sdata, image_key: str, name: str | None) -> str:
    if name is not None:
        return repr(str(name))
    path = getattr(sdata, "path", None) or source_of(sdata, image_key)
    return repr(str(path)) if path is not None else f"(image {image_key!r})"


def _check_channels(sdata, image_key: str, model) -> None:
    """Refuse an image whose number of channels differs from the training images'."""
    metadata = model.metadata
    expected = metadata.get("in_channels")
    if expected is None and metadata.get("route") == "cnn":
        expected = model.get_config().get("in_channels")
    if expected is None:
        return
    channels = int(image_levels(sdata, image_key)[0].data.sizes["c"])
    if channels != int(expected):
        hint = (" (an alpha channel? keep the first three: RGB)" if channels == 4 and expected == 3
                else "")
        raise ValueError(
            f"The model was trained on {expected}-channel images (3: RGB H&E) but "
            f"sdata.images[{image_key!r}] has {channels} channel(s){hint}. Predict on an image "
            "of the kind the model was trained on (image_key=), or train a model on this kind.")


def _check_encoder_unchanged(metadata: Mapping[str, Any]) -> None:
    """Refuse when the encoder's weights (a model file) differ from those used in training."""
    record = metadata.get("features") or {}
    if "fingerprint" not in record or record.get("source") == "user":
        return  # the user's own features: their record is compared with the training one
    now = encoder_fingerprint(metadata["encoder"])
    if now != record["fingerprint"]:
        raise ValueError(
            f"The encoder {metadata['encoder']!r} is not the one the model was trained with "
            f"(its fingerprint is {now!r}, training used {record['fingerprint']!r}): the file "
            "changed or is another one. Give the training encoder's file at that path, or "
            "retrain the model with this encoder.")


def _prediction_table(tile_table, values: np.ndarray, genes: list[str], tiles_key: str, *,
                      image: dict[str, str] | None = None):
    import anndata as ad
    import pandas as pd
    from spatialdata.models import TableModel

    obs = tile_table.obs.copy()
    obs["region"] = pd.Categorical([tiles_key] * len(obs))
    table = ad.AnnData(X=np.asarray(values, dtype=np.float32), obs=obs,
                       var=pd.DataFrame(index=pd.Index(genes)),
                       obsm={"spatial": np.asarray(tile_table.obsm["spatial"], dtype=float)},
                       uns={"tiles": TileRecord.from_uns(tile_table.uns["tiles"]).to_uns(),
                            "prediction": {"tiles_key": tiles_key,
                                           "values": "log1p-normalised expression",
                                           **({} if image is None else {"image": image})}})
    return TableModel.parse(table, region=tiles_key, region_key="region", instance_key="tile_id")
