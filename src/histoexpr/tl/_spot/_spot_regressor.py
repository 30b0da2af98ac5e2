"""Spot-level expression from H&E: ``hx.tl.fit(..., model="spot_regressor")`` and its ``predict``.

Three routes share one entry point. ``"ridge"`` and ``"mlp"`` are heads on frozen tile
embeddings (:func:`histoexpr.tl.embed`); ``"cnn"`` fine-tunes a convolutional network end to end
on spot-centred patches. All predict log1p-normalised expression (counts scaled to 10,000 per
spot). Prediction writes a table of expression per tile that scanpy and squidpy take as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import TYPE_CHECKING

import numpy as np

from ..._core.logs import logger
from ..._core.seeds import resolve_device
from ..._core.validate import _NOT_IN_NAMES, check_store_name
from .._features._embed import check_encoder
from .._sections import as_sections
from ._options import (
    AutoRouteOptions,
    CNNRouteOptions,
    RidgeRouteOptions,
    SpotRegressorOptions,
    _EncoderRouteOptions,
)
from ._spot_auto import fit_auto
from ._spot_features import _radii, section_features
from ._spot_inputs import (
    CNN_NORMALISATION,
    _image_channels,
    _prepare_section,
    _refuse_random_encoder,
    _require_spot_inputs,
    _tiles_at,
    _training_mpp,
    check_section_tiles,
)
from ._spot_predict import predict  # noqa: F401 (the model's predict, found through tl._models.MODEL_TABLE)

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ...models import Network


def fit(data: SpatialData | Sequence[SpatialData] | Mapping[str, SpatialData],
        options: SpotRegressorOptions) -> Network:
    """Train a spot regressor: log1p-normalised expression of genes from the H&E around a spot.

    Each section needs an image, spots (``spots_key``) and their counts (``table_key``). A tile of
    ``size_um`` is centred on every spot (``hx.pp.tile(..., centres=spots_key)``, kept under
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
    options
        The model's options, each documented in :class:`~histoexpr.tl.SpotRegressorOptions`.
        ``hx.tl.fit(data, model=..., **options)`` builds them from keywords and
        records them in ``metadata["options"]``.

    Returns
    -------
    The trained network (:class:`~histoexpr.models.LinearHead`, :class:`~histoexpr.models.MLPHead`,
    :class:`~histoexpr.models.SpotCNN`, or for the CNN encoders
    :class:`~histoexpr.models.EncoderHead`) whose ``metadata`` holds ``genes``, ``route``,
    ``size_um``, ``mpp``, ``options``, the encoder and feature
    options, and the training ``history`` (route ``"auto"``: also ``head``, ``target``,
    ``stain`` and the search in ``auto``), and, for the head routes with ``calibrate=True``,
    ``calibration``: each gene's inner Pearson, the conformal interval half-widths and the
    domain-shift guard, from inner folds of the training sections (see
    :class:`~histoexpr.tl.SpotRegressorOptions` and the page "What a prediction means").

    Examples
    --------
    >>> model = hx.tl.fit({"C2": c2, "C3": c3}, model="spot_regressor", route="auto")
    >>> model.metadata["auto"]["chosen"]
    {'encoder': 'ssl', 'stain': 'none', 'standardise_sections': True, ...}
    >>> hx.tl.predict(model, c4)

    """
    from ...pp import select_genes

    if isinstance(options, _EncoderRouteOptions):  # the encoders need torch: checked here,
        _refuse_random_encoder(options.encoder)  # the options class checks the other rules
    size_um = options.size_um
    sections = as_sections(data)
    tables = [_require_spot_inputs(s, name, options.image_key, options.spots_key,
                                   options.table_key) for name, s in sections.items()]
    in_channels = _image_channels(sections, options.image_key)
    # everything that can be refused is checked before a section is tiled (as in predict)
    resolve_device(options.device)
    if isinstance(options, _EncoderRouteOptions) and not options.network_encoder:
        check_encoder(options.encoder, in_channels=in_channels)
        if options.features_key is None:
            default_features_key(_encoder_argument(options.encoder))
    if isinstance(options.genes, int | np.integer) and not isinstance(options.genes, bool):
        chosen = select_genes(tables, n_top=int(options.genes), flavor=options.gene_flavor)
    else:
        chosen = select_genes(tables, genes=options.genes)
    mpp = _training_mpp(sections, options.image_key, options.mpp)
    for name, s in sections.items():  # every section's tiles checked before any is tiled
        check_section_tiles(name, s, image_key=options.image_key, spots_key=options.spots_key,
                            tiles_key=options.tiles_key, size_um=size_um, mpp=mpp)
    prepared = [_prepare_section(name, s, chosen, image_key=options.image_key,
                                 spots_key=options.spots_key, table_key=options.table_key,
                                 tiles_key=options.tiles_key, size_um=size_um, mpp=mpp)
                for name, s in sections.items()]
    metadata = {"model": "spot_regressor", "route": options.route, "genes": chosen,
                "size_um": float(size_um), "mpp": float(mpp), "image_key": options.image_key,
                "table_key": options.table_key,
                "in_channels": in_channels,
                "trained_on": {p.name: len(p.targets) for p in prepared}}
    match options:  # the route is the options' class
        case RidgeRouteOptions(subspot_um=subspot_um) if subspot_um is not None:
            network, extra = _fit_subspot(prepared, options, mpp)
        case AutoRouteOptions():
            network, extra = fit_auto(prepared, options, mpp=mpp)
        case _EncoderRouteOptions() if options.network_encoder:  # one configuration, no search
            network, extra = fit_auto(prepared, _one_configuration(options), mpp=mpp)
            extra["route"] = options.route
        case CNNRouteOptions():
            network, extra = _fit_cnn(prepared, chosen, options, mpp)
        case _EncoderRouteOptions():
            network, extra = _fit_head(prepared, options, metadata)
        case _:
            raise TypeError(f"{type(options).__name__} is no route of the spot regressor; "
                            "pass hx.tl.SpotRegressorOptions(route=...).")
    metadata.update(extra)
    network.metadata = metadata
    logger.info("Trained a %s spot regressor of %d genes on %d spots of %d section(s).",
                options.route, len(chosen), sum(len(p.targets) for p in prepared), len(prepared))
    return network


def _encoder_argument(encoder: str | Sequence[str]) -> str | list[str]:
    """The head routes' encoder as :func:`histoexpr.tl.embed` gets it: a name or a list."""
    return str(encoder) if isinstance(encoder, str) else [str(e) for e in encoder]


def default_features_key(encoder: str | Sequence[str]) -> str:
    """The obsm key of a head route's features when ``features_key`` is not given.

    ``f"X_{encoder}"`` (names of a list joined by ``"+"``), as one plain name: a model file is
    named by its stem and an ``"hf:<folder>"`` by the folder's name (as :func:`histoexpr.tl.embed`
    names them), and a character no folder name may hold (``:`` of ``"squidpy:texture"``) is
    replaced by ``_``: the key becomes a folder when the section is saved.
    """
    from pathlib import Path

    def plain(one: str) -> str:
        if one.endswith(".pt"):
            one = Path(one).stem
        elif one.startswith("hf:"):
            one = f"hf_{Path(one.removeprefix('hf:')).name}"
        return "".join("_" if c in _NOT_IN_NAMES or ord(c) < 32 else c for c in one)

    key = "X_" + "+".join(plain(one) for one in ([encoder] if isinstance(encoder, str)
                                                   else encoder))
    return check_store_name("features_key", key, what="set of features in the tile table's obsm")


def _fit_subspot(prepared, options: RidgeRouteOptions, mpp: float) -> tuple[Network, dict]:
    """Route ``"ridge"`` below the spot (``subspot_um``)."""
    from ._subspot import fit_subspot

    return fit_subspot(
        prepared, subspot_um=options.subspot_um, size_um=options.size_um, mpp=mpp,
        image_key=options.image_key, encoder=options.encoder,
        standardise=options.standardise_sections, context_um=options.context_um,
        alphas=options.alphas, n_components=options.n_components,
        batch_size=options.batch_size, device=options.device)


def _one_configuration(options: _EncoderRouteOptions) -> AutoRouteOptions:
    """A head route on a CNN encoder trained inside ``fit``, as route ``"auto"`` without a search.

    One candidate: the route's encoder, scaling and context, log1p targets, the route's head.
    The options the route has are carried over; the other head's, unread, keep their defaults.
    """
    candidates = {"encoder": [options.encoder], "stain": ["none"],
                  "standardise_sections": [options.standardise_sections],
                  "context_um": [options.context_um], "target": ["log1p"],
                  "head": [options.route]}
    carried = {f.name: getattr(options, f.name) for f in fields(AutoRouteOptions)
               if f.name != "route" and hasattr(options, f.name)}
    return AutoRouteOptions(**carried, candidates=candidates)


def _fit_cnn(prepared, chosen, options: CNNRouteOptions, mpp: float) -> tuple[Network, dict]:
    """Route ``"cnn"``: a SpotCNN trained end to end on the patches."""
    from ._spot_training import fit_cnn

    at_mpp = [replace(p, sdata=_tiles_at(p.sdata, options.tiles_key, size_um=options.size_um,
                                         mpp=mpp)) for p in prepared]
    network, extra = fit_cnn(at_mpp, tiles_key=options.tiles_key, image_key=options.image_key,
                             n_genes=len(chosen), arch=options.arch, epochs=options.epochs,
                             lr=options.lr, batch_size=options.batch_size,
                             val_fraction=options.val_fraction, device=options.device,
                             seed=options.seed)
    extra["normalisation"] = CNN_NORMALISATION
    extra["calibration"] = {"available": False, "reason": "the 'cnn' route keeps no "
                            "calibration (guard, intervals, inner scores); train a head "
                            "route ('ridge', 'mlp' or 'auto') to have one"}
    return network, extra


def _fit_head(prepared, options: _EncoderRouteOptions,
              metadata: dict) -> tuple[Network, dict]:
    """Routes ``"ridge"`` and ``"mlp"`` on the features of a named encoder (or a model file)."""
    from ._spot_training import fit_mlp, fit_ridge

    encoder = _encoder_argument(options.encoder)
    features_key = options.features_key
    if features_key is None:
        features_key = default_features_key(encoder)
    features, records, unscaled = [], [], []
    for p in prepared:
        values, record = section_features(
            p.sdata, options.tiles_key, encoder=encoder, features_key=features_key,
            context_um=options.context_um, standardise=options.standardise_sections,
            image_key=options.image_key, batch_size=max(options.batch_size, 64),
            device=options.device)
        features.append(values[p.tile_rows])
        records.append(record)
        if options.calibrate:  # the guard's features: the encoder's own, read back from obsm
            unscaled.append(section_features(
                p.sdata, options.tiles_key, encoder=encoder, features_key=features_key,
                image_key=options.image_key, batch_size=max(options.batch_size, 64),
                device=options.device)[0][p.tile_rows])
    if any(r != records[0] for r in records[1:]):
        raise ValueError(f"The sections' features under obsm[{features_key!r}] were made "
                         f"differently ({records}); give every section the same kind of "
                         "features, or pass another features_key to compute them anew.")
    targets = [p.targets for p in prepared]
    if "fingerprint" in records[0] and records[0].get("source") == "user":
        encoder = records[0]["encoder"]  # a network of the user's made them (as recorded)
    metadata.update({"encoder": encoder, "features_key": features_key,
                     "features": records[0], "context_um": _radii(options.context_um),
                     "standardise_sections": options.standardise_sections})

    def train(x, y):
        if isinstance(options, RidgeRouteOptions):
            return fit_ridge(x, y, alphas=options.alphas, n_components=options.n_components)
        return fit_mlp(x, y, hidden=options.hidden, n_members=options.n_members,
                       epochs=options.epochs, lr=options.lr, batch_size=options.batch_size,
                       val_fraction=options.val_fraction, device=options.device,
                       seed=options.seed)

    network, extra = train(features, targets)
    if options.calibrate:
        from ._calibration import calibrate as calibrate_model
        from ._calibration import network_refit

        extra["calibration"] = calibrate_model(
            prepared, features, network_refit(lambda x, y: train(x, y)[0]),
            guard_features=unscaled)
    return network, extra
