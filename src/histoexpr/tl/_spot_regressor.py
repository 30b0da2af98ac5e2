"""Spot-level expression from H&E: ``hx.tl.fit(..., model="spot_regressor")`` and its ``predict``.

Three routes share one entry point. ``"ridge"`` and ``"mlp"`` are heads on frozen tile
embeddings (:func:`histoexpr.tl.embed`); ``"cnn"`` fine-tunes a convolutional network end to end
on spot-centred patches. All predict log1p-normalised expression (counts scaled to 10,000 per
spot). Prediction writes a table of expression per tile that scanpy and squidpy take as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .._spatial_uns import add_spatial_uns
from .._utils import (
    check_key_free,
    check_key_writable,
    log_added,
    logger,
    require_element,
    resolve_device,
    store_element,
)
from ..io._image import image_levels
from ._embed import encoder_fingerprint, image_coverage, image_fingerprint

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData
    from spatialdata import SpatialData

    from ..models import Network

#: how the elements predict writes record their writer (see ``_utils.store_element``)
STEP = "hx.tl.predict"

ROUTES = ("ridge", "mlp", "cnn", "auto")
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))
#: relative pixel-size difference below which two pixel sizes count as the same
_MPP_TOLERANCE = 0.05
#: relative difference of tile widths below which tiles fit a model's patch width
_SIZE_TOLERANCE = 0.05
#: normalisation of patches fed to the CNN route (tiles are in [0, 1])
CNN_NORMALISATION = {"mean": 0.5, "std": 0.25}
#: recorded on the tiles and features the spot regressor makes itself; only those it remakes
MADE_BY = "spot_regressor"


@dataclass
class _Section:
    """What one training section contributes: its features or patches and their targets."""

    name: str
    sdata: Any
    tile_rows: np.ndarray  # rows of the spot-tile table that have a spot with counts
    targets: np.ndarray  # (n, genes) log1p-normalised expression
    centres: np.ndarray  # (n, 2) um


def fit(
    data: SpatialData | Sequence[SpatialData] | Mapping[str, SpatialData],
    *,
    genes: int | Sequence[str] = 50,
    gene_flavor: str = "top_expressed",
    route: str = "ridge",
    encoder: str | Sequence[str] = "handcrafted",
    features_key: str | None = None,
    image_key: str = "he",
    spots_key: str = "spots",
    table_key: str = "table",
    tiles_key: str = "spot_tiles",
    patch_um: float = 112.0,
    mpp: float | None = None,
    context_um: float | Sequence[float] | None = None,
    standardise_sections: bool = False,
    n_components: int | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    arch: str = "small_cnn",
    hidden: int = 256,
    n_members: int = 1,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 32,
    val_fraction: float = 0.15,
    device: str | None = None,
    seed: int | None = None,
    candidates: Mapping[str, Sequence[Any]] | None = None,
    ssl_encoder: str | Path | Network | None = None,
    pretrain_tiles_key: str | None = None,
    pretrain_epochs: int | None = None,
) -> Network:
    """Train a spot regressor: log1p-normalised expression of genes from the H&E around a spot.

    Each section needs an image, spots (``spots_key``) and their counts (``table_key``). A tile of
    ``patch_um`` is centred on every spot (``hx.pp.tile(..., centers=spots_key)``, kept under
    ``tiles_key``). Existing tiles there are reused only when they were made alike (same image,
    spots, width and pixel size, as their table's ``uns["tiles"]`` records); tiles an earlier
    fit made otherwise are remade (logged), any others are refused with the difference. Spots
    whose centre lies off the image or that have no counts are dropped (logged). Sections with
    different gene sets are reduced to their shared genes (logged).

    Routes:

    - ``"ridge"``: tile embeddings (``hx.tl.embed`` with ``encoder``), standardised, optionally
      reduced by PCA, then ridge regression whose ``alpha`` is chosen by inner cross-validation
      (leave one section out when there are several sections, else 5 folds) on the mean Pearson
      correlation over genes;
    - ``"mlp"``: the same features through a small MLP trained with early stopping;
    - ``"cnn"``: a :class:`histoexpr.models.SpotCNN` (``arch``) trained end to end on the patches
      with flips, rotations and a mild colour jitter;
    - ``"auto"``: the locked protocol. Every option of the head routes (features and encoder,
      stain normalisation, per-section scaling, context, target transform, ridge or MLP head)
      is chosen by inner leave-one-section-out on the training sections given here, never on
      anything else (with a single section: three spatial bands of its spots, each held out in
      turn); the ridge penalty is chosen inside each of those fits as for ``"ridge"``. The
      chosen configuration is then trained on all sections. The grid is ``candidates``
      (the default grid is below), searched one option at a time in its order
      (each option takes its best value with the others fixed at their best so far), so the
      cost is the sum of the numbers of values, not their product; features are computed once
      per section, encoder and stain and shared by the candidates. The model's
      ``metadata["auto"]`` records the grid, every candidate tried with its inner scores, and
      the choice.

    Encoders of the head routes and of ``candidates["encoder"]`` beyond those of
    :func:`histoexpr.tl.embed`: ``"ssl"``, a small CNN (``TileEncoder(arch="small_cnn",
    width=32, pool_levels=True)``) pretrained by SimCLR on the training sections' unlabelled
    tiles inside ``fit`` (``pretrain_tiles_key``; or the file ``ssl_encoder``), and
    ``"random_cnn"``, the same CNN at random initialisation. Both travel inside the returned
    model (:class:`~histoexpr.models.EncoderHead`).

    Target transforms (``candidates["target"]``), each computed within a training section:
    ``"log1p"`` (none), ``"centred"`` (each gene's section mean removed: library depth and
    batch offsets), ``"standardised"`` (and divided by its section standard deviation),
    ``"rank"`` (normal scores of the ranks). Predictions are put back on the scale of the pooled
    training spots (correlations within a section are unchanged).

    Stain normalisation (``candidates["stain"]``: ``"none"`` or ``"macenko"``): a Macenko
    reference is estimated on the training sections' tiles (:func:`histoexpr.pp.stain_reference`,
    through torchstain) and stored in ``metadata["stain"]``; every section, new ones in
    ``predict`` too, is mapped onto it with its own stain estimate
    (:func:`histoexpr.pp.stain_normaliser`) before any encoder sees its tiles.

    Parameters
    ----------
    data
        A section (SpatialData), a list of them, or a mapping from section names to them.
    genes
        The genes to predict: a number of genes chosen by :func:`histoexpr.pp.select_genes`
        with ``gene_flavor`` on all training sections, or a list of gene names (a single name
        is one gene).
    gene_flavor
        Ranking used when ``genes`` is a number (``"top_expressed"``, ``"pearson_residuals"``...).
    route
        ``"ridge"``, ``"mlp"`` or ``"cnn"``.
    encoder
        Frozen encoder of the head routes, as :func:`histoexpr.tl.embed` takes it
        (``"handcrafted"``, ``"squidpy"``, an architecture, a model file, or a list of them
        whose features are concatenated). Prediction recomputes the same features on new tiles,
        so the encoder must have fixed weights: architecture names without weights (random)
        are refused. The encoder's fingerprint (a digest of a model file) is recorded.
    features_key
        Key of the embeddings in the tile table's ``obsm``; defaults to ``f"X_{encoder}"``
        (names of a list joined by ``"+"``). Features already there are reused when their
        record (``uns["embeddings"]``, written by :func:`histoexpr.tl.embed`) shows the same
        encoder, image and tiles; features an earlier fit made otherwise are remade, others
        are refused. Features without a record are your own and are used as they are
        (prediction then needs the same kind of features under that key).
    image_key
        Key of the H&E image.
    spots_key
        Key of the spot shapes.
    table_key
        Key of the spot table (raw counts in ``layers["counts"]`` or ``X``; ``obs["spot_id"]``
        matching the spot shapes' index).
    tiles_key
        Key of the spot-centred tiles (made if absent).
    patch_um
        Width of the patch around each spot in um (HEST: 112 um).
    mpp
        Pixel size of the patches in um/px; defaults to the image's full resolution.
    context_um
        Head routes: neighbourhood context. Also use the mean features of the tiles whose
        centres lie within this distance (um); several distances add one mean each (rings of
        context, e.g. ``(300, 600)``). ``None`` uses the tile alone.
    standardise_sections
        Head routes: standardise features within each section (removes differences of stain and
        scanner between sections; prediction does the same on the new section).
    n_components
        Ridge route: reduce the standardised features to this many principal components first.
    alphas
        Ridge route: the penalties tried by inner cross-validation.
    arch
        CNN route: encoder architecture of :class:`histoexpr.models.SpotCNN`.
    hidden
        MLP route: width of the hidden layer.
    n_members
        MLP route: number of MLPs trained with successive seeds whose predictions are averaged
        (on her2st an ensemble of 3 gained about 0.02 mean Pearson over a single one).
    epochs
        MLP and CNN routes: maximum epochs (early stopping on a validation split).
    lr
        MLP and CNN routes: learning rate.
    batch_size
        MLP and CNN routes: spots per batch (also tiles per batch when embedding).
    val_fraction
        MLP and CNN routes: share of spots held out for early stopping.
    device
        Torch device; ``None`` uses ``hx.settings.device``.
    seed
        Random seed; ``None`` uses ``hx.settings.seed``.
    candidates
        Route ``"auto"``: the options to choose from, as ``{option: [values]}`` for any of
        ``"encoder"``, ``"stain"``, ``"standardise_sections"``, ``"context_um"``, ``"target"``
        and ``"head"``; options left out take the values of the default grid:
        ``{"encoder": ["squidpy+handcrafted", "ssl", "random_cnn"], "stain": ["none",
        "macenko"], "standardise_sections": [True, False], "context_um": [[300, 600], None],
        "target": ["log1p", "centred", "standardised", "rank"], "head": ["ridge", "mlp"]}``
        (searched in this order, starting from the first values).
        One value per option trains that configuration without a search. The MLP head uses
        ``hidden``, ``n_members``, ``epochs`` and ``lr``; the ridge head ``alphas``.
    ssl_encoder
        Encoder ``"ssl"``: a pretrained :class:`~histoexpr.models.TileEncoder` or its model file
        (from :func:`histoexpr.tl.pretrain` on the training sections' tiles) to use instead of
        pretraining one inside ``fit``.
    pretrain_tiles_key
        Encoder ``"ssl"`` pretrained inside ``fit``: the unlabelled tiles of every training
        section to pretrain on; ``None`` makes 48 px tiles at ``mpp`` on a grid over the tissue
        (stride two tiles) in light copies of the sections (nothing is written to them).
    pretrain_epochs
        Encoder ``"ssl"`` pretrained inside ``fit``: SimCLR epochs (``None``: 6; batch 64,
        lr 1e-3, temperature 0.2, cosine schedule).

    Returns
    -------
    The trained network (:class:`~histoexpr.models.LinearHead`, :class:`~histoexpr.models.MLPHead`,
    :class:`~histoexpr.models.SpotCNN`, or for the CNN encoders
    :class:`~histoexpr.models.EncoderHead`) whose ``metadata`` holds ``genes``, ``route``,
    ``patch_um``, ``mpp``, the encoder and feature options, and the training ``history``
    (route ``"auto"``: also ``head``, ``target``, ``stain`` and the search in ``auto``).

    Examples
    --------
    >>> model = hx.tl.fit({"C2": c2, "C3": c3}, model="spot_regressor", route="auto")
    >>> model.metadata["auto"]["chosen"]
    {'encoder': 'ssl', 'stain': 'none', 'standardise_sections': True, ...}
    >>> hx.tl.predict(model, c4)

    """
    from ..pp import select_genes

    if route not in ROUTES:
        raise ValueError(f"Unknown route {route!r}; choose one of {ROUTES}.")
    if route == "cnn" and (context_um is not None or standardise_sections):
        raise ValueError("context_um and standardise_sections apply to the head routes "
                         "('ridge', 'mlp'); for the CNN route give a larger patch_um.")
    if route in ("ridge", "mlp"):
        _refuse_random_encoder(encoder)
    if route == "auto" and (context_um is not None or standardise_sections
                            or n_components is not None or features_key is not None
                            or encoder != "handcrafted"):
        raise ValueError("route='auto' chooses the encoder, context and scaling itself; give "
                         "the values to choose from as candidates={'encoder': [...], "
                         "'context_um': [...], 'standardise_sections': [...]} instead.")
    if candidates is not None and route != "auto":
        raise ValueError("candidates are the grid of route='auto'; pass route='auto', or drop "
                         "candidates to train one route.")
    sections = _as_sections(data)
    tables = [_require_spot_inputs(s, name, image_key, spots_key, table_key)
              for name, s in sections.items()]
    in_channels = _image_channels(sections, image_key)
    if isinstance(genes, int | np.integer) and not isinstance(genes, bool):
        chosen = select_genes(tables, n_top=int(genes), flavor=gene_flavor)
    else:
        chosen = select_genes(tables, genes=genes)
    mpp = _training_mpp(sections, image_key, mpp)
    prepared = [_prepare_section(name, s, chosen, image_key=image_key, spots_key=spots_key,
                                 table_key=table_key, tiles_key=tiles_key, patch_um=patch_um,
                                 mpp=mpp) for name, s in sections.items()]
    metadata = {"model": "spot_regressor", "route": route, "genes": chosen,
                "patch_um": float(patch_um), "mpp": float(mpp), "image_key": image_key,
                "in_channels": in_channels,
                "trained_on": {p.name: len(p.targets) for p in prepared}}
    network_encoder = isinstance(encoder, str) and encoder in ("ssl", "random_cnn")
    if route == "auto" or (route in ("ridge", "mlp") and network_encoder):
        from ._spot_auto import fit_auto

        if route != "auto":  # one configuration, no search
            candidates = {"encoder": [encoder], "stain": ["none"],
                          "standardise_sections": [standardise_sections],
                          "context_um": [context_um], "target": ["log1p"], "head": [route]}
            if n_components is not None:
                raise ValueError("n_components applies to named encoders; the CNN encoders "
                                 "'ssl' and 'random_cnn' are used without PCA.")
        network, extra = fit_auto(
            prepared, chosen, candidates=candidates, tiles_key=tiles_key, image_key=image_key,
            mpp=mpp, ssl_encoder=ssl_encoder, pretrain_tiles_key=pretrain_tiles_key,
            pretrain_epochs=pretrain_epochs,
            options={"alphas": alphas, "hidden": hidden, "n_members": n_members,
                     "epochs": epochs, "lr": lr, "batch_size": batch_size,
                     "val_fraction": val_fraction, "device": device, "seed": seed})
        if route != "auto":
            extra["route"] = route
    elif route == "cnn":
        from ._spot_training import fit_cnn

        at_mpp = [replace(p, sdata=_tiles_at(p.sdata, tiles_key, patch_um=patch_um, mpp=mpp))
                  for p in prepared]
        network, extra = fit_cnn(at_mpp, tiles_key=tiles_key, image_key=image_key,
                                 n_genes=len(chosen), arch=arch, epochs=epochs, lr=lr,
                                 batch_size=batch_size, val_fraction=val_fraction,
                                 device=device, seed=seed)
        extra["normalisation"] = CNN_NORMALISATION
    else:
        encoder = str(encoder) if isinstance(encoder, str) else [str(e) for e in encoder]
        if features_key is None:
            features_key = f"X_{encoder if isinstance(encoder, str) else '+'.join(encoder)}"
        features, records = [], []
        for p in prepared:
            values, record = section_features(
                p.sdata, tiles_key, encoder=encoder, features_key=features_key,
                context_um=context_um, standardise=standardise_sections, image_key=image_key,
                batch_size=max(batch_size, 64), device=device)
            features.append(values[p.tile_rows])
            records.append(record)
        if any(r != records[0] for r in records[1:]):
            raise ValueError(f"The sections' features under obsm[{features_key!r}] were made "
                             f"differently ({records}); give every section the same kind of "
                             "features, or pass another features_key to compute them anew.")
        targets = [p.targets for p in prepared]
        metadata.update({"encoder": encoder, "features_key": features_key,
                         "features": records[0], "context_um": _radii(context_um),
                         "standardise_sections": standardise_sections})
        if route == "ridge":
            from ._spot_training import fit_ridge

            network, extra = fit_ridge(features, targets, alphas=alphas,
                                       n_components=n_components)
        else:
            from ._spot_training import fit_mlp

            network, extra = fit_mlp(features, targets, hidden=hidden, n_members=n_members,
                                     epochs=epochs, lr=lr, batch_size=batch_size,
                                     val_fraction=val_fraction, device=device, seed=seed)
    metadata.update(extra)
    network.metadata = metadata
    logger.info("Trained a %s spot regressor of %d genes on %d spots of %d section(s).",
                route, len(chosen), sum(len(p.targets) for p in prepared), len(prepared))
    return network


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
    key_added: str | None = None,
    overwrite: bool = False,
) -> AnnData:
    """Predict expression on every tile of a section, with or without spots.

    Tiles of the model's ``patch_um`` and pixel size are used: those under ``tiles_key`` if they
    exist (their width must match the model's; if their pixel size differs they are read at the
    model's, with a log line), else a grid over the tissue is made there with ``stride_um``
    (finer than the spot spacing if asked: tiles then overlap). If the image's own pixel size is
    coarser than the model's, tiles are upsampled (logged).

    Parameters
    ----------
    model
        A spot regressor from ``hx.tl.fit(..., model="spot_regressor")`` or a model file.
    sdata
        The section: an H&E image is enough.
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
    key_added
        Key of the table of predictions; defaults to ``f"{tiles_key}_expression"``.
    overwrite
        Replace an existing table ``key_added`` that an earlier ``predict`` wrote (never an
        element of another origin).

    Returns
    -------
    The table of predictions (also added as ``sdata.tables[key_added]``): tiles x genes,
    log1p-normalised expression in ``X``, the tile table's ``obs`` (``tile_id``, and ``spot_id``
    for spot-centred tiles), tile centres in um in ``obsm["spatial"]``, annotating the tile
    shapes (``region`` = ``tiles_key``, ``instance_key="tile_id"``), and scanpy's
    ``uns["spatial"]`` (a copy of the image, at most 2000 px long, and its scale factors to um):
    ``sc.pl.spatial``, ``sq.pl.spatial_scatter`` and ``hx.pl.spots`` draw it over the tissue.

    """
    from ..pp import tile

    metadata = getattr(model, "metadata", {}) or {}
    if metadata.get("model") != "spot_regressor":
        raise ValueError("This network is not a spot regressor; train one with "
                         "hx.tl.fit(..., model='spot_regressor').")
    image_key = metadata["image_key"] if image_key is None else image_key
    require_element(sdata, image_key, "images")
    tiles_key = f"{image_key}_expr_tiles" if tiles_key is None else tiles_key
    key_added = f"{tiles_key}_expression" if key_added is None else key_added
    check_key_writable(sdata, key_added, overwrite=overwrite, step=STEP)
    patch_um, mpp = metadata["patch_um"], metadata["mpp"]
    # everything that can be refused is checked before anything is written
    _check_channels(sdata, image_key, model)
    _check_image_mpp(sdata, image_key, mpp)
    if metadata["route"] != "cnn":
        _check_encoder_unchanged(metadata)
    if tiles_key in sdata.shapes and stride_um is not None:
        raise ValueError(f"Tiles {tiles_key!r} exist already, so stride_um cannot apply; pass a "
                         "new tiles_key to make grid tiles at that stride.")
    if tiles_key not in sdata.shapes:
        tile(sdata, image_key, size_um=patch_um, mpp=mpp,
             stride=patch_um if stride_um is None else stride_um, min_tissue=min_tissue,
             key_added=tiles_key)
        sdata.tables[f"{tiles_key}_table"].uns["tiles"]["made_by"] = MADE_BY
    tiles = _tiles_at(sdata, tiles_key, patch_um=patch_um, mpp=mpp, image_key=image_key)
    tile_table = tiles.tables[f"{tiles_key}_table"]
    coverage = image_coverage(tiles, image_key, np.asarray(tile_table.obsm["spatial"]),
                              tile_table.uns["tiles"]["size_um"])
    on_image = coverage > 1e-9
    if not on_image.any():
        raise ValueError(f"All {on_image.size} tiles {tiles_key!r} lie off the image "
                         f"{image_key!r}; tile this image or give the image they were made on.")
    if metadata["route"] == "cnn":
        from torch.utils.data import Subset

        from ..pp import TileDataset
        from ._embed import encode

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
            from ..pp import stain_normaliser

            transform = stain_normaliser(tiles, tiles_key, reference=metadata["stain"])
            features_key = f"{features_key}_{metadata['stain']['method']}_{transform.digest}"
        features, _ = section_features(tiles, tiles_key, encoder=encoder,
                                       features_key=features_key,
                                       context_um=metadata.get("context_um") or None,
                                       standardise=metadata.get("standardise_sections", False),
                                       image_key=image_key, expected=expected,
                                       batch_size=batch_size, device=device,
                                       transform=transform)
        features = features[on_image]
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
    table = _prediction_table(tile_table[on_image], values, metadata["genes"], tiles_key,
                              image={"key": image_key,
                                     "fingerprint": image_fingerprint(sdata, image_key)})
    add_spatial_uns(table, sdata, image_key, spot_diameter_um=tile_table.uns["tiles"]["size_um"])
    check_key_free(sdata, key_added, overwrite=overwrite, step=STEP)
    store_element(sdata, "tables", key_added, table, step=STEP)
    log_added("tables", key_added, f"{values.shape[0]} tiles x {values.shape[1]} genes")
    return sdata.tables[key_added]


def section_features(sdata: SpatialData, tiles_key: str, *, encoder: str | Sequence[str],
                     features_key: str, context_um: float | Sequence[float] | None = None,
                     standardise: bool = False, image_key: str | None = None,
                     expected: dict[str, Any] | None = None, batch_size: int = 64,
                     device: str | None = None,
                     transform: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Features of every tile of a section, with context and scaling, and how they were made.

    Features under ``features_key`` are reused only when their record matches the encoder and
    the tiles (or ``expected``, the record of a model's training features); features this
    regressor made otherwise are remade, any others refused. Tiles wholly off the image have NaN
    features and take no part in context means or scaling.
    """
    from ._embed import embed

    table_key = f"{tiles_key}_table"
    table = sdata.tables[table_key]
    info = table.uns["tiles"]
    image_key = str(info["image_key"]) if image_key is None else image_key
    wanted = {"encoder": _encoder_name(encoder), "image_key": image_key,
              "mpp": float(info["mpp"]), "size_px": int(info["size_px"])}
    if transform is not None:
        wanted["transform"] = getattr(transform, "spec", type(transform).__name__)
    if expected is not None and expected.get("source") != "user":
        wanted.update(fingerprint=expected.get("fingerprint"))
    else:
        wanted.update(fingerprint=encoder_fingerprint(encoder))
    own = expected is not None and expected.get("source") == "user"
    compute = features_key not in table.obsm
    if not compute:
        record = table.uns.get("embeddings", {}).get(features_key)
        if record is None:
            if expected is not None and not own:
                raise ValueError(
                    f"obsm[{features_key!r}] of sdata.tables[{table_key!r}] has no record of how "
                    f"it was made, but the model was trained on features of {wanted['encoder']!r}"
                    f"; histoexpr reuses only features it can check. Pass another tiles_key (the "
                    "features are then computed) or delete those features.")
        else:
            differences = _differences(record, wanted)
            if differences and record.get("made_by") != MADE_BY:
                raise ValueError(
                    f"obsm[{features_key!r}] of sdata.tables[{table_key!r}] was made otherwise "
                    f"({'; '.join(differences)}), so it is not reused. Pass another features_key "
                    "(or another tiles_key) to compute matching features.")
            if differences:
                logger.info("Remaking obsm[%r] of %r, made by an earlier spot regressor "
                            "otherwise (%s).", features_key, table_key, "; ".join(differences))
                compute = True
    elif own:
        raise ValueError(
            f"The model was trained on features of your own under obsm[{features_key!r}], which "
            f"sdata.tables[{table_key!r}] lacks; put the same kind of features there (one row "
            "per tile, made the same way), then predict.")
    if compute:
        embed(sdata, tiles_key, encoder=encoder, image_key=image_key, key_added=features_key,
              batch_size=batch_size, device=device, overwrite=True, transform=transform)
        table.uns["embeddings"][features_key]["made_by"] = MADE_BY
    record = table.uns.get("embeddings", {}).get(features_key)
    features = np.asarray(table.obsm[features_key], dtype=np.float32)
    if record is None:
        made = {"source": "user", "n_features": int(features.shape[1])}
    else:
        made = {"encoder": str(record["encoder"]),
                "fingerprint": str(record.get("fingerprint", wanted["fingerprint"])),
                "image_key": str(record["image_key"]), "mpp": float(record["mpp"]),
                "size_px": int(record["size_px"]), "n_features": int(features.shape[1])}
    valid = np.isfinite(features).all(axis=1)
    if standardise:
        scale = features[valid].std(axis=0)
        features = (features - features[valid].mean(axis=0)) / np.where(scale > 0, scale, 1)
    centres = np.asarray(table.obsm["spatial"])
    means = []
    for radius in _radii(context_um):
        mean = np.full_like(features, np.nan)
        mean[valid] = neighbour_mean(features[valid], centres[valid], radius_um=radius)
        means.append(mean)
    return np.hstack([features, *means]).astype(np.float32), made


def _encoder_name(encoder: Any) -> str:
    """The name :func:`histoexpr.tl.embed` gives an encoder argument (without resolving it)."""
    from pathlib import Path

    import torch

    if isinstance(encoder, list | tuple):
        return "+".join(_encoder_name(one) for one in encoder)
    if isinstance(encoder, torch.nn.Module):  # as hx.tl.embed names a network
        return type(encoder).__name__.lower()
    spec = str(encoder)
    if spec.split(":")[0] == "squidpy":
        return "squidpy"
    if spec.endswith(".pt"):
        return Path(spec).stem
    if spec.startswith("timm:"):
        return spec.removeprefix("timm:").replace("/", "_")
    return spec


def _differences(record: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """How a record of tiles' features differs from the wanted one, in words."""
    out = []
    if "fingerprint" in record and wanted.get("fingerprint") is not None:
        if str(record["fingerprint"]) != str(wanted["fingerprint"]):
            out.append(f"encoder {record['fingerprint']!r}, not {wanted['fingerprint']!r}")
    elif str(record.get("encoder")) != wanted["encoder"]:
        out.append(f"encoder {record.get('encoder')!r}, not {wanted['encoder']!r}")
    if str(record.get("image_key")) != wanted["image_key"]:
        out.append(f"image {record.get('image_key')!r}, not {wanted['image_key']!r}")
    if abs(float(record.get("mpp", np.nan)) - wanted["mpp"]) > _MPP_TOLERANCE * wanted["mpp"] \
            or not np.isfinite(float(record.get("mpp", np.nan))):
        out.append(f"tiles at {float(record.get('mpp', np.nan)):.4g} um/px, not "
                   f"{wanted['mpp']:.4g}")
    if int(record.get("size_px", -1)) != wanted["size_px"]:
        out.append(f"tiles of {record.get('size_px')} px, not {wanted['size_px']}")
    if _canonical(record.get("transform")) != _canonical(wanted.get("transform")):
        out.append("tiles transformed otherwise (e.g. another stain normalisation)")
    return out


def _canonical(value: Any) -> str:
    """A record's value as text that survives a round trip through ``uns`` (arrays as lists)."""
    import json

    return json.dumps(value, sort_keys=True, default=lambda a: np.asarray(a).tolist())


def _radii(context_um: float | Sequence[float] | None) -> list[float]:
    if context_um is None:
        return []
    radii = [context_um] if np.isscalar(context_um) else list(context_um)
    return [float(r) for r in radii]


def neighbour_mean(features: np.ndarray, centres: np.ndarray, *, radius_um: float) -> np.ndarray:
    """Mean features of the other tiles within ``radius_um``; a tile's own where it has none."""
    from scipy.sparse import csr_matrix
    from scipy.spatial import cKDTree

    if not radius_um > 0:
        raise ValueError(f"context_um must be a positive distance in um, got {radius_um!r}.")
    pairs = cKDTree(centres).query_pairs(r=radius_um, output_type="ndarray")
    n = len(features)
    rows = np.concatenate([pairs[:, 0], pairs[:, 1]])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0]])
    adjacency = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    counts = np.asarray(adjacency.sum(axis=1)).ravel()
    summed = adjacency @ features
    alone = counts == 0
    summed[alone] = features[alone]
    return (summed / np.maximum(counts, 1)[:, None]).astype(np.float32)


def _as_sections(data) -> dict[str, Any]:
    from spatialdata import SpatialData

    if isinstance(data, SpatialData):
        return {"section_0": data}
    if isinstance(data, Mapping):
        sections = {str(k): v for k, v in data.items()}
    else:
        sections = {f"section_{i}": s for i, s in enumerate(data)}
    if not sections:
        raise ValueError("No section given: pass a SpatialData, a list or a dict of them.")
    for name, section in sections.items():
        if not isinstance(section, SpatialData):
            raise TypeError(f"Section {name!r} is a {type(section).__name__}, not a SpatialData.")
    return sections


def _require_spot_inputs(sdata, name: str, image_key: str, spots_key: str, table_key: str):
    for key, kind in ((image_key, "images"), (spots_key, "shapes"), (table_key, "tables")):
        if key not in getattr(sdata, kind):
            raise KeyError(f"Section {name!r} has no sdata.{kind}[{key!r}]: a spot regressor "
                           "learns from an image, its spots and their counts.")
    table = sdata.tables[table_key]
    if "spot_id" not in table.obs:
        raise KeyError(f"sdata.tables[{table_key!r}] of section {name!r} has no obs['spot_id'] "
                       f"matching the index of sdata.shapes[{spots_key!r}].")
    return table


def _training_mpp(sections: Mapping[str, Any], image_key: str, mpp: float | None) -> float:
    if mpp is not None:
        if not mpp > 0:
            raise ValueError(f"mpp must be a positive pixel size in um/px, got {mpp!r}.")
        return float(mpp)
    sizes = [image_levels(s, image_key)[0].mpp for s in sections.values()]
    if max(sizes) / min(sizes) > 1 + _MPP_TOLERANCE:
        logger.info("The sections' images have %s um/px; patches are read at the coarsest, "
                    "%.4g um/px (pass mpp= to choose).", [round(v, 4) for v in sizes], max(sizes))
    return float(max(sizes))


def _prepare_section(name: str, sdata, genes: list[str], *, image_key: str, spots_key: str,
                     table_key: str, tiles_key: str, patch_um: float, mpp: float) -> _Section:
    """Spot tiles of one section, joined with the log1p-normalised expression of their spot."""
    from ..pp import tile
    from ..pp._genes import expression_targets, library_sizes

    overwrite = False
    if tiles_key in sdata.shapes:
        differences = tile_differences(sdata, tiles_key, image_key=image_key, patch_um=patch_um,
                                       mpp=mpp, centres=spots_key)
        table = sdata.tables.get(f"{tiles_key}_table")
        made_by = None if table is None else table.uns.get("tiles", {}).get("made_by")
        if differences and made_by != MADE_BY:
            raise ValueError(
                f"The tiles sdata.shapes[{tiles_key!r}] of section {name!r} were not made for "
                f"this fit ({'; '.join(differences)}), and histoexpr reuses only tiles made "
                f"alike and remakes only its own. Pass another tiles_key (e.g. "
                f"tiles_key='{tiles_key}_{patch_um:g}um_{mpp:g}mpp') to make matching tiles.")
        if differences:
            logger.info("Section %r: remaking the tiles %r that an earlier fit made otherwise "
                        "(%s).", name, tiles_key, "; ".join(differences))
        overwrite = bool(differences)
    if overwrite or tiles_key not in sdata.shapes:
        tile(sdata, image_key, size_um=patch_um, mpp=mpp, centers=spots_key, min_tissue=0,
             key_added=tiles_key, overwrite=overwrite)
        sdata.tables[f"{tiles_key}_table"].uns["tiles"]["made_by"] = MADE_BY
    tile_table = sdata.tables[f"{tiles_key}_table"]
    counts_table = sdata.tables[table_key]
    row_of_spot = {sid: i for i, sid in enumerate(counts_table.obs["spot_id"].to_numpy())}
    spot_rows = np.array([row_of_spot.get(s, -1) for s in tile_table.obs["spot_id"]])
    on_image = _inside_image(sdata, image_key, tile_table.obsm["spatial"])
    library = library_sizes(counts_table)
    has_counts = (spot_rows >= 0) & (library[np.maximum(spot_rows, 0)] > 0)
    keep = on_image & has_counts
    for mask, why in ((~on_image, "centres off the image"),
                      (on_image & ~has_counts, "no counts")):
        if mask.any():
            logger.info("Section %r: dropped %d of %d spots with %s.", name, int(mask.sum()),
                        len(mask), why)
    if keep.sum() < 2:
        raise ValueError(f"Section {name!r} has fewer than 2 spots on the image with counts.")
    targets = expression_targets(counts_table[spot_rows[keep]], genes)
    return _Section(name, sdata, np.flatnonzero(keep), targets,
                    np.asarray(tile_table.obsm["spatial"])[keep])


def tile_differences(sdata, tiles_key: str, *, image_key: str, patch_um: float, mpp: float,
                     centres: str | None = None) -> list[str]:
    """How the tiles under ``tiles_key`` differ from the ones asked for, in words (none: [])."""
    table = sdata.tables.get(f"{tiles_key}_table")
    if table is None or "tiles" not in table.uns:
        return [f"no table {tiles_key + '_table'!r} records how they were made"]
    info = table.uns["tiles"]
    out = []
    if abs(float(info["size_um"]) - patch_um) > _SIZE_TOLERANCE * patch_um:
        out.append(f"{float(info['size_um']):g} um wide, not {patch_um:g} um")
    if abs(float(info["mpp"]) - mpp) > _MPP_TOLERANCE * mpp:
        out.append(f"at {float(info['mpp']):.4g} um/px, not {mpp:.4g} um/px")
    if str(info.get("image_key", image_key)) != image_key:
        out.append(f"cut from {info['image_key']!r}, not {image_key!r}")
    if centres is not None:
        if "spot_id" not in table.obs:
            out.append("on a grid, not centred on spots")
        elif info.get("centres") is not None and str(info["centres"]) != centres:
            out.append(f"centred on {info['centres']!r}, not {centres!r}")
    return out


def _refuse_random_encoder(encoder: Any) -> None:
    """Head routes need an encoder with fixed weights: prediction must make the same features."""
    from ..models._encoders import ARCHITECTURES

    for one in encoder if isinstance(encoder, list | tuple) else [encoder]:
        if isinstance(one, str) and (one in ARCHITECTURES or one.startswith("timm:")):
            raise ValueError(
                f"encoder={one!r} has random weights (no pretrained weights are loaded), "
                "different at every call, so prediction could not make the features the "
                "regressor was trained on. Give a model file of a trained encoder (e.g. from "
                "hx.tl.pretrain, saved with hx.io.save_model), 'handcrafted' or 'squidpy'.")


def _image_channels(sections: Mapping[str, Any], image_key: str) -> int:
    channels = {name: int(image_levels(s, image_key)[0].data.sizes["c"])
                for name, s in sections.items()}
    if len(set(channels.values())) > 1:
        raise ValueError(f"The sections' images {image_key!r} have different numbers of "
                         f"channels ({channels}); train on images of one kind (e.g. all RGB).")
    return next(iter(channels.values()))


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
    if "fingerprint" not in record:
        return
    now = encoder_fingerprint(metadata["encoder"])
    if now != record["fingerprint"]:
        raise ValueError(
            f"The encoder {metadata['encoder']!r} is not the one the model was trained with "
            f"(its fingerprint is {now!r}, training used {record['fingerprint']!r}): the file "
            "changed or is another one. Give the training encoder's file at that path, or "
            "retrain the model with this encoder.")


def _inside_image(sdata, image_key: str, centres: np.ndarray) -> np.ndarray:
    level = image_levels(sdata, image_key)[0]
    (ox, oy), (height, width) = level.offset, level.shape_yx
    x, y = centres[:, 0], centres[:, 1]
    return (x >= ox) & (y >= oy) & (x < ox + width * level.mpp) & (y < oy + height * level.mpp)


def _check_image_mpp(sdata, image_key: str, mpp: float) -> None:
    image_mpp = image_levels(sdata, image_key)[0].mpp
    if image_mpp > mpp * (1 + _MPP_TOLERANCE):
        logger.warning("The model was trained on patches at %.4g um/px but %r has only %.4g "
                       "um/px: patches are upsampled, predictions may degrade.", mpp, image_key,
                       image_mpp)
    elif abs(image_mpp - mpp) > _MPP_TOLERANCE * mpp:
        logger.info("The model was trained at %.4g um/px; %r (%.4g um/px) is read at the "
                    "model's pixel size.", mpp, image_key, image_mpp)


def _tiles_at(sdata, tiles_key: str, *, patch_um: float, mpp: float,
              image_key: str | None = None):
    """Return the section, or a light copy whose tiles are read at the model's pixel size."""
    from spatialdata import SpatialData

    table_key = f"{tiles_key}_table"
    require_element(sdata, table_key, "tables")
    info = sdata.tables[table_key].uns.get("tiles")
    if info is None:
        raise ValueError(f"sdata.tables[{table_key!r}] does not record how the tiles were made "
                         "(no uns['tiles']); make tiles with hx.pp.tile or pass another "
                         "tiles_key.")
    if image_key is not None and str(info.get("image_key", image_key)) != image_key:
        logger.info("The tiles %r were cut from %r; reading them from %r.", tiles_key,
                    info["image_key"], image_key)
    if abs(info["size_um"] - patch_um) > _SIZE_TOLERANCE * patch_um:
        raise ValueError(
            f"The tiles {tiles_key!r} are {info['size_um']:g} um wide but the model was trained "
            f"on {patch_um:g} um patches; make tiles of that width (hx.pp.tile(..., "
            f"size_um={patch_um:g})) or leave tiles_key to a new key."
        )
    if abs(info["mpp"] - mpp) <= _MPP_TOLERANCE * mpp:
        return sdata
    logger.info("The tiles %r are at %.4g um/px; reading them at the model's %.4g um/px.",
                tiles_key, info["mpp"], mpp)
    table = sdata.tables[table_key].copy()
    table.uns["tiles"] = {**info, "mpp": float(patch_um / round(patch_um / mpp)),
                          "size_px": round(patch_um / mpp)}
    for key in [k for k in table.obsm if k != "spatial"]:
        del table.obsm[key]  # features computed at another pixel size
    return SpatialData(images=dict(sdata.images), shapes={tiles_key: sdata.shapes[tiles_key]},
                       tables={table_key: table})


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
                       uns={"tiles": dict(tile_table.uns["tiles"]),
                            "prediction": {"tiles_key": tiles_key,
                                           "values": "log1p-normalised expression",
                                           **({} if image is None else {"image": image})}})
    return TableModel.parse(table, region=tiles_key, region_key="region", instance_key="tile_id")
