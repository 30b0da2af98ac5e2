"""Spot-level expression from H&E: ``hx.tl.fit(..., model="spot_regressor")`` and its ``predict``.

Three routes share one entry point. ``"ridge"`` and ``"mlp"`` are heads on frozen tile
embeddings (:func:`histoexpr.tl.embed`); ``"cnn"`` fine-tunes a convolutional network end to end
on spot-centred patches. All predict log1p-normalised expression (counts scaled to 10,000 per
spot). Prediction writes a table of expression per tile that scanpy and squidpy take as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._utils import (
    logger,
)
from .._options import SpotRegressorOptions
from .._sections import as_sections
from ._spot_features import _radii, section_features
from ._spot_inputs import (
    CNN_NORMALISATION,
    ROUTES,
    _image_channels,
    _prepare_section,
    _refuse_random_encoder,
    _require_spot_inputs,
    _tiles_at,
    _training_mpp,
)
from ._spot_predict import predict  # noqa: F401 (the model's predict, found through tl._api.MODELS)

if TYPE_CHECKING:
    from pathlib import Path

    from spatialdata import SpatialData

    from ...models import Network


def fit(data: SpatialData | Sequence[SpatialData] | Mapping[str, SpatialData], *,
        options: SpotRegressorOptions | None = None) -> Network:
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
        The model's options, each documented in :class:`~histoexpr.tl.SpotRegressorOptions`;
        ``None`` uses the defaults. ``hx.tl.fit(data, model=..., **options)`` builds
        them from keywords.

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
    options = SpotRegressorOptions() if options is None else options
    network = _fit(data, **options.kwargs())
    network.metadata["options"] = options.record()
    return network


def _fit(
    data: SpatialData | Sequence[SpatialData] | Mapping[str, SpatialData],
    *,
    genes: int | Sequence[str],
    gene_flavor: str,
    route: str,
    encoder: str | Sequence[str],
    features_key: str | None,
    image_key: str,
    spots_key: str,
    table_key: str,
    tiles_key: str,
    size_um: float,
    mpp: float | None,
    context_um: float | Sequence[float] | None,
    standardise_sections: bool,
    n_components: int | None,
    alphas: Sequence[float],
    arch: str,
    hidden: int,
    n_members: int,
    epochs: int,
    lr: float,
    batch_size: int,
    val_fraction: float,
    device: str | None,
    seed: int | None,
    candidates: Mapping[str, Sequence[Any]] | None,
    ssl_encoder: str | Path | Network | None,
    pretrain_tiles_key: str | None,
    pretrain_epochs: int | None,
    calibrate: bool,
    subspot_um: float | None = None,
) -> Network:
    """Train with the options of :class:`~histoexpr.tl.SpotRegressorOptions` by name."""
    from ...pp import select_genes

    if route not in ROUTES:
        raise ValueError(f"Unknown route {route!r}; choose one of {ROUTES}.")
    if route == "cnn" and (context_um is not None or standardise_sections):
        raise ValueError("context_um and standardise_sections apply to the head routes "
                         "('ridge', 'mlp'); for the CNN route give a larger size_um.")
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
    if subspot_um is not None:
        from ._subspot import check_subspot_options

        check_subspot_options(route, encoder, size_um, subspot_um)
    sections = as_sections(data)
    tables = [_require_spot_inputs(s, name, image_key, spots_key, table_key)
              for name, s in sections.items()]
    in_channels = _image_channels(sections, image_key)
    if isinstance(genes, int | np.integer) and not isinstance(genes, bool):
        chosen = select_genes(tables, n_top=int(genes), flavor=gene_flavor)
    else:
        chosen = select_genes(tables, genes=genes)
    mpp = _training_mpp(sections, image_key, mpp)
    prepared = [_prepare_section(name, s, chosen, image_key=image_key, spots_key=spots_key,
                                 table_key=table_key, tiles_key=tiles_key, size_um=size_um,
                                 mpp=mpp) for name, s in sections.items()]
    metadata = {"model": "spot_regressor", "route": route, "genes": chosen,
                "size_um": float(size_um), "mpp": float(mpp), "image_key": image_key,
                "in_channels": in_channels,
                "trained_on": {p.name: len(p.targets) for p in prepared}}
    network_encoder = isinstance(encoder, str) and encoder in ("ssl", "random_cnn")
    if subspot_um is not None:
        from ._subspot import fit_subspot

        network, extra = fit_subspot(prepared, subspot_um=subspot_um, size_um=size_um, mpp=mpp,
                                     image_key=image_key, encoder=encoder,
                                     standardise=standardise_sections, context_um=context_um,
                                     alphas=alphas,
                                     n_components=n_components, batch_size=batch_size,
                                     device=device)
    elif route == "auto" or (route in ("ridge", "mlp") and network_encoder):
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
                     "val_fraction": val_fraction, "device": device, "seed": seed,
                     "calibrate": calibrate})
        if route != "auto":
            extra["route"] = route
    elif route == "cnn":
        from ._spot_training import fit_cnn

        at_mpp = [replace(p, sdata=_tiles_at(p.sdata, tiles_key, size_um=size_um, mpp=mpp))
                  for p in prepared]
        network, extra = fit_cnn(at_mpp, tiles_key=tiles_key, image_key=image_key,
                                 n_genes=len(chosen), arch=arch, epochs=epochs, lr=lr,
                                 batch_size=batch_size, val_fraction=val_fraction,
                                 device=device, seed=seed)
        extra["normalisation"] = CNN_NORMALISATION
        extra["calibration"] = {"available": False, "reason": "the 'cnn' route keeps no "
                                "calibration (guard, intervals, inner scores); train a head "
                                "route ('ridge', 'mlp' or 'auto') to have one"}
    else:
        encoder = str(encoder) if isinstance(encoder, str) else [str(e) for e in encoder]
        if features_key is None:
            features_key = f"X_{encoder if isinstance(encoder, str) else '+'.join(encoder)}"
        features, records, unscaled = [], [], []
        for p in prepared:
            values, record = section_features(
                p.sdata, tiles_key, encoder=encoder, features_key=features_key,
                context_um=context_um, standardise=standardise_sections, image_key=image_key,
                batch_size=max(batch_size, 64), device=device)
            features.append(values[p.tile_rows])
            records.append(record)
            if calibrate:  # the guard's features: the encoder's own, read back from obsm
                unscaled.append(section_features(
                    p.sdata, tiles_key, encoder=encoder, features_key=features_key,
                    image_key=image_key, batch_size=max(batch_size, 64),
                    device=device)[0][p.tile_rows])
        if any(r != records[0] for r in records[1:]):
            raise ValueError(f"The sections' features under obsm[{features_key!r}] were made "
                             f"differently ({records}); give every section the same kind of "
                             "features, or pass another features_key to compute them anew.")
        targets = [p.targets for p in prepared]
        metadata.update({"encoder": encoder, "features_key": features_key,
                         "features": records[0], "context_um": _radii(context_um),
                         "standardise_sections": standardise_sections})
        from ._spot_training import fit_mlp, fit_ridge

        def train(x, y):
            if route == "ridge":
                return fit_ridge(x, y, alphas=alphas, n_components=n_components)
            return fit_mlp(x, y, hidden=hidden, n_members=n_members, epochs=epochs, lr=lr,
                           batch_size=batch_size, val_fraction=val_fraction, device=device,
                           seed=seed)

        network, extra = train(features, targets)
        if calibrate:
            from ._calibration import calibrate as calibrate_model
            from ._calibration import network_refit

            extra["calibration"] = calibrate_model(
                prepared, features, network_refit(lambda x, y: train(x, y)[0]),
                guard_features=unscaled)
    metadata.update(extra)
    network.metadata = metadata
    logger.info("Trained a %s spot regressor of %d genes on %d spots of %d section(s).",
                route, len(chosen), sum(len(p.targets) for p in prepared), len(prepared))
    return network
