"""The HEST protocol of the spot regressor: train on all groups but one, score the held-out one.

Moved out of :mod:`histoexpr.tl._metrics._expression_metrics` so that the metrics import nothing
that trains.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..._core.logs import each_item, logger, progress
from ..._core.validate import check_int, renamed_parameters
from .._metrics._expression_metrics import evaluate_expression
from .._sections import as_sections, check_no_copies

if TYPE_CHECKING:
    from types import ModuleType

    import pandas as pd
    from spatialdata import SpatialData

    from ._options import SpotRegressorOptions


@renamed_parameters(sections="data")
def cross_validate_spots(
    data: Mapping[str, SpatialData],
    *,
    model: str | SpotRegressorOptions = "spot_regressor",
    module: ModuleType | None = None,
    groups: Mapping[str, str] | None = None,
    n_genes: int = 50,
    gene_flavor: str = "pearson_residuals",
    table_key: str = "table",
    **fit_kwargs: Any,
) -> pd.DataFrame:
    """Run the HEST protocol in one call: train on all groups but one, score the held-out one.

    For each fold the genes are chosen on the training sections only (``n_genes`` by
    ``gene_flavor``; HEST uses highly variable genes), a spot model is trained with
    ``fit_kwargs`` and applied to the spot-centred tiles of each held-out section, and every gene
    is scored by :func:`evaluate_expression`.

    Any model of kind ``"spot"`` runs it where it provides what the protocol uses: options
    ``genes`` (the protocol passes each fold's genes), its module's ``predict(model, sdata, *,
    tiles_key=..., key_added=...)`` writing a table with a row per tile (``obs["spot_id"]`` of
    the tile table), and ``metadata["image_key"]``, ``["size_um"]`` and ``["mpp"]`` of the
    trained network (the held-out sections are tiled on their spots alike). Where its options
    take ``gene_flavor`` (the spot regressor), its ``fit`` chooses the genes of the fold from
    ``genes=n_genes``; else they are chosen here (:func:`histoexpr.pp.select_genes`) and passed
    as a list. ``table_key``, ``tiles_key`` and ``spots_key`` are passed or read where its options
    have them (else ``"table"``, ``"spot_tiles"``, ``"spots"``).

    Parameters
    ----------
    data
        Sections by name (a mapping) or a list of them (named ``section_0``, ...), each with an
        image, spots and a spot table of raw counts. The same image under two names in different
        groups is refused: a fold would train on the copy of a section it scores.
    model
        ``"spot_regressor"`` or the options of a spot model
        (:class:`~histoexpr.tl.SpotRegressorOptions`, or another model's with ``module``).
    module
        The model's module (its ``fit(data, options)`` and ``predict``); ``None``: the spot
        regressor's (``hx.tl.cross_validate`` passes the one of the model table).
    groups
        The group (patient) of each section: folds hold out a whole group. ``None`` holds out one
        section at a time.
    n_genes
        Genes per fold, chosen on its training sections. To score a fixed list of genes chosen
        beforehand instead, pass ``genes=[...]`` (a number there is refused: it is ``n_genes``).
    gene_flavor
        Ranking of the genes, as :func:`histoexpr.pp.select_genes` takes it.
    table_key
        Key of the spot tables.
    **fit_kwargs
        Options of the model, as ``hx.tl.fit`` takes them (route, encoder, size_um...).

    Returns
    -------
    One row per held-out section and gene: columns ``fold``, ``section``, ``gene``, ``pearson``,
    ``spearman``, ``pearson_libreg``, ``spearman_libreg``. The HEST score of a fold is
    ``frame.groupby("fold")["pearson"].mean()``.

    """
    import pandas as pd

    from .._options import options_for

    model, module = _spot_model(model, module)
    taken = type(model)._all_options()
    sections = as_sections(data)
    fixed = "genes" in fit_kwargs
    genes = fit_kwargs.pop("genes") if fixed else n_genes
    if fixed and isinstance(genes, numbers.Number):
        raise TypeError(
            f"cross_validate chooses the genes inside each fold: pass their number as "
            f"n_genes={genes!r} (ranked by gene_flavor=), not genes=. genes= takes a fixed list "
            "of gene names chosen beforehand.")
    if table_key != "table" and "table_key" not in taken:
        raise ValueError(f"table_key={table_key!r}: model {model.model!r} has no option "
                         "table_key to train on that table; name the spot counts 'table' or "
                         "give its options a table_key.")
    own = {"gene_flavor": gene_flavor, "table_key": table_key}
    chooses = "gene_flavor" in taken  # its fit chooses the genes from their number
    if not (chooses or fixed):
        check_int("n_genes", n_genes, minimum=1)
    options = options_for(model, **({"genes": genes} if chooses or fixed else {}),
                          **{k: v for k, v in own.items() if k in taken},
                          **fit_kwargs)  # checked once, before the first fold
    groups = {name: name for name in sections} if groups is None else dict(groups)
    missing = [name for name in sections if name not in groups]
    if missing:
        raise KeyError(f"groups names no group for the sections {missing}.")
    if len(set(groups.values())) < 2:
        raise ValueError("Cross-validation needs at least two groups (patients or sections).")
    check_no_copies(sections, groups)
    tiles_key = getattr(options, "tiles_key", None) or "spot_tiles"
    spots_key = getattr(options, "spots_key", None) or "spots"
    # the user's sections are never written to: tiles, features and predictions go into light
    # copies (shared images and shapes, copied tables) that live only for this call
    work = {name: _working_copy(section) for name, section in sections.items()}
    frames = []
    folds = list(dict.fromkeys(groups[name] for name in sections))
    bar = progress(folds, desc="folds", total=len(folds))
    for number, fold in enumerate(bar, start=1):
        bar.set_description(f"fold {number}/{len(folds)}")
        train = {n: s for n, s in work.items() if groups[n] != fold}
        with each_item():  # what fit and predict log of each fold is debug
            chosen = options if chooses or fixed else options_for(
                options, genes=_fold_genes(train, table_key, n_genes, gene_flavor))
            model = module.fit(train, chosen)
        _check_trained(model, module)
        for name in (n for n in sections if groups[n] == fold):
            section = work[name]
            with each_item():
                _spot_tiles(section, model, tiles_key, spots_key, name=name)
                key = _free_key(section, "cv_expression")
                module.predict(model, section, tiles_key=tiles_key, key_added=key)
                scores = evaluate_expression(section, key, table_key)
            del section.tables[key]  # the copy's own table, written just above
            frames.append(scores.reset_index().assign(fold=fold, section=name))
            logger.info("Fold %d/%d, held-out %r: mean Pearson %.3f over %d genes.", number,
                        len(folds), name, scores["pearson"].mean(), len(scores))
    frame = pd.concat(frames, ignore_index=True)
    return frame[["fold", "section", "gene", *[c for c in frame.columns
                                               if c not in ("fold", "section", "gene")]]]


def _spot_model(model: Any, module: ModuleType | None) -> tuple[Any, ModuleType]:
    """The options and module of the model to cross-validate, checked for what the protocol uses.

    By name only the spot regressor (its module is the default); another spot model comes with
    its options object and its module, as ``hx.tl.cross_validate`` passes them.
    """
    import inspect

    from .._options import ModelOptions
    from ._options import SpotRegressorOptions

    if module is None:
        if isinstance(model, str) and model == "spot_regressor":
            model = SpotRegressorOptions()
        if not isinstance(model, SpotRegressorOptions):
            raise ValueError(
                f"Without module=, the HEST protocol trains spot regressors, not "
                f"{getattr(model, 'model', model)!r}. Cross-validate another spot model with "
                "hx.tl.cross_validate(data, model=...), which passes its options and module.")
        from . import _spot_regressor as module
        return model, module
    if not isinstance(model, ModelOptions):
        raise TypeError(f"model must be the options of the model of module {module.__name__!r}"
                        f" (hx.tl.cross_validate passes them), got {model!r}.")
    if "genes" not in type(model)._all_options():
        raise ValueError(
            f"Model {model.model!r} cannot run the HEST protocol: its options "
            f"({type(model).__name__}) have no genes, through which each fold's genes, chosen "
            "on its training sections, are passed. Add an option genes (a list of gene names).")
    predict = getattr(module, "predict", None)
    parameters = inspect.signature(predict).parameters if callable(predict) else {}
    lacking = [n for n in ("tiles_key", "key_added") if n not in parameters]
    if lacking and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        raise ValueError(
            f"Model {model.model!r} cannot run the HEST protocol: {module.__name__}.predict "
            f"takes no {' or '.join(lacking)}; the protocol predicts the spot-centred tiles it "
            "makes on each held-out section (tiles_key=) into a table (key_added=).")
    return model, module


def _check_trained(network: Any, module: ModuleType) -> None:
    """Refuse a trained spot model whose metadata does not say how its tiles were cut."""
    metadata = getattr(network, "metadata", None) or {}
    lacking = [key for key in ("image_key", "size_um", "mpp") if key not in metadata]
    if lacking:
        raise ValueError(
            f"{module.__name__}.fit returned a network without metadata {lacking}: the HEST "
            "protocol tiles each held-out section on its spots as the model's training tiles "
            "were cut (the image, tile width in um and pixel size in um/px). Record them in "
            "network.metadata.")


def _fold_genes(train: Mapping[str, Any], table_key: str, n_genes: int,
                gene_flavor: str) -> list[str]:
    """The genes of a fold, chosen on its training sections (for a model that takes a list)."""
    from ...pp import select_genes

    return select_genes([s.tables[table_key] for s in train.values()], n_top=n_genes,
                        flavor=gene_flavor)


def _working_copy(sdata):
    """A SpatialData sharing ``sdata``'s images, labels, points and shapes, with copied tables.

    Elements added to or removed from the copy, and anything written into its tables, leave
    ``sdata`` as it was.
    """
    from spatialdata import SpatialData

    return SpatialData(images=dict(sdata.images), labels=dict(sdata.labels),
                       points=dict(sdata.points), shapes=dict(sdata.shapes),
                       tables={key: table.copy() for key, table in sdata.tables.items()})


def _free_key(sdata, key: str) -> str:
    from ..._core.ownership import element_kind

    while element_kind(sdata, key) is not None:
        key = f"_{key}"
    return key


def _spot_tiles(sdata, model, tiles_key: str, spots_key: str, *, name: str) -> None:
    """Spot-centred tiles of a held-out section as the model wants them (made or checked)."""
    from ..._core.records import made_within, within_of
    from ...pp import tile
    from ._spot_inputs import WITHIN, tile_differences

    meta = model.metadata
    geometry = {"image_key": meta["image_key"], "size_um": meta["size_um"], "mpp": meta["mpp"]}
    overwrite = False
    if tiles_key in sdata.shapes:
        differences = tile_differences(sdata, tiles_key, centres=spots_key, **geometry)
        if not differences:
            return
        table = sdata.tables.get(f"{tiles_key}_table")
        if table is None or within_of(table.uns) != WITHIN:
            raise ValueError(
                f"The tiles {tiles_key!r} of the held-out section {name!r} were not made for "
                f"this model ({'; '.join(differences)}); pass another tiles_key to make "
                "matching ones.")
        overwrite = True
    with made_within(WITHIN):
        tile(sdata, meta["image_key"], size_um=meta["size_um"], mpp=meta["mpp"],
             centres=spots_key, min_tissue=0, key_added=tiles_key, overwrite=overwrite)
