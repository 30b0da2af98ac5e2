"""What the bag models check and write when they predict: section scores, contributions, classes.

Ownership of what predict writes into the tile tables: each entry (the ``obs`` column and the
``obsm`` keys named after ``key_added``) is recorded in the table's
``uns["bag_outputs"][key_added]``, with the writer record ``"histoexpr"`` (``{"step":
"hx.tl.predict", "key": key_added}``, and ``within`` when written on behalf of another step,
e.g. ``hx.tl.cross_validate``), and ``"model"``, the kind of bag model, where the caller names
it), as :func:`histoexpr.tl.embed` records its features in ``uns["embeddings"]``. Before
anything is written every entry is checked in every section: an entry that exists is replaced
only with ``overwrite=True`` and only when this record says the same step (for the same kind of
model, where both name one) wrote it under the same key; anything else (the user's own
columns, embed's features, another key's outputs) is refused, naming it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..._core import distributed as _distributed
from ..._core.logs import log_added, logger, shown
from ..._core.records import (
    BAG_OUTPUTS,
    WRITER_KEY,
    EmbeddingRecord,
    WriterRecord,
    bag_output_entries,
    bag_outputs_record,
    current_within,
)
from ..._core.validate import check_store_name
from ._bag_data import (
    MADE_FIELDS,
    Bags,
    encoder_of,
    features_made,
    tile_features,
)
from ._bag_targets import regression_targets

if TYPE_CHECKING:
    from anndata import AnnData


#: the step whose outputs these are (the writer recorded with them)
STEP = "hx.tl.predict"
#: the run the per-tile results written now belong to, where a step predicts with several
#: models on purpose (one per fold of hx.tl.cross_validate); ``None``: the model's own run
_RUN: contextvars.ContextVar[str | None] = contextvars.ContextVar("histoexpr_mil_run",
                                                                 default=None)


@contextlib.contextmanager
def results_run(run: str) -> Iterator[None]:
    """Record the per-tile results written inside the block as parts of the one run ``run``.

    :func:`histoexpr.tl.cross_validate` predicts each fold's held-out slides with that fold's
    model: its results are one set all the same, and are recorded as made in one run.
    """
    token = _RUN.set(run)
    try:
        yield
    finally:
        _RUN.reset(token)


def model_identity(model) -> dict[str, Any]:
    """What the per-tile results of ``model`` record of it in a slide store.

    ``fingerprint``: a digest of the model's weights and metadata (another model never passes
    for it); ``run``: the run they belong to, the model's own (``"hx.tl.predict:<digest>"``,
    the same for every call with the same model, so that a rerun finishes an interrupted one)
    or the one :func:`results_run` names. Results of one key from different runs are refused
    where the cohort's slides are opened (``cohort[slide_id]``).
    """
    from ..._core.torch_files import model_fingerprint

    fingerprint = model_fingerprint(model)
    return {"fingerprint": fingerprint, "run": _RUN.get() or f"{STEP}:{fingerprint}"}


def _record(table, key_added: str) -> Mapping | None:
    records = table.uns.get(BAG_OUTPUTS)
    record = records.get(key_added) if isinstance(records, Mapping) else None
    return record if isinstance(record, Mapping) else None


def _same_writer(record: Mapping | None, key_added: str, model: str | None = None) -> bool:
    """Whether ``record`` says this same step (on behalf of the same caller) wrote the key.

    With ``model`` (the kind of bag model), a record naming another kind is not the same
    writer; a record naming none (an earlier version's, or one read back from a slide store,
    whose results record no kind) is, as every writer of these entries is a bag model.
    """
    writer = WriterRecord.from_uns(record.get(WRITER_KEY)) if record is not None else None
    theirs = record.get("model") if record is not None else None
    return (writer is not None and writer.step == STEP and writer.key == key_added
            and writer.within == current_within()
            and (model is None or theirs is None or str(theirs) == model))


def _names(record: Mapping, kind: str) -> list[str]:
    """The entries of ``kind`` a record lists (a list, or an array once read from a file)."""
    value = record.get(kind)
    return [] if value is None else [str(v) for v in np.atleast_1d(np.asarray(value, dtype=object))]


def _owned(table, key_added: str, kind: str, name: str, model: str | None = None) -> bool:
    record = _record(table, key_added)
    return _same_writer(record, key_added, model) and name in _names(record, kind)


def _writer_of(table, kind: str, name: str) -> str:
    """Who wrote the entry, in words, for a refusal."""
    if kind == "obsm":
        embedding = table.uns.get("embeddings")
        if isinstance(embedding, Mapping) and name in embedding:
            writer = EmbeddingRecord.from_uns(embedding[name]).writer
            return f"written by {writer.step if writer is not None else 'hx.tl.embed'}"
    records = table.uns.get(BAG_OUTPUTS)
    for record in (records.values() if isinstance(records, Mapping) else ()):
        if isinstance(record, Mapping) and name in _names(record, kind):
            return _describe(record)
    return "not written by histoexpr"


def _describe(record: Mapping | None) -> str:
    """The writer a record of outputs names, in words."""
    writer = WriterRecord.from_uns(record.get(WRITER_KEY)) if record is not None else None
    if writer is None:
        return "not written by histoexpr"
    within = f" within {writer.within}" if writer.within else ""
    model = f" of a {record['model']} model" if record.get("model") is not None else ""
    return f"written by {writer.step}{model}{within} under key_added={writer.key!r}"


def _taken(table, key_added: str, *, overwrite: bool,
           model: str | None = None) -> tuple[list[str], list[str]]:
    """Entries under ``key_added`` that exist: those this step may replace, those it may not."""
    own, foreign = [], []
    records = table.uns.get(BAG_OUTPUTS)
    if records is not None and not isinstance(records, Mapping):
        foreign.append(f"uns[{BAG_OUTPUTS!r}] (not written by histoexpr)")
    elif records is not None and key_added in records:
        label = f"uns[{BAG_OUTPUTS!r}][{key_added!r}]"
        record = _record(table, key_added)
        if _same_writer(record, key_added, model):
            own.append(label)
        else:
            foreign.append(f"{label} ({_describe(record)})")
    for kind, names in bag_output_entries(key_added).items():
        for name in names:
            if name not in getattr(table, kind):
                continue
            if _owned(table, key_added, kind, name, model):
                own.append(f"{kind}[{name!r}]")
            else:
                foreign.append(f"{kind}[{name!r}] ({_writer_of(table, kind, name)})")
    return (own if not overwrite else []), foreign


def _free_key(tables: Mapping, key_added: str) -> str:
    for i in range(2, 1000):
        key = f"{key_added}_{i}"
        entries = bag_output_entries(key)
        if all(n not in getattr(t, kind) for t in tables.values()
               for kind, names in entries.items() for n in names) and not any(
                _record(t, key) is not None for t in tables.values()):
            return key
    return f"{key_added}_new"


def check_outputs_writable(tables: Mapping, key_added: str, *, overwrite: bool,
                           step: str = STEP, model: str | None = None) -> None:
    """Raise a ``KeyError`` naming every entry under ``key_added`` this call may not write.

    ``tables``: the tile table of each section, by name. An existing entry is replaced only with
    ``overwrite=True`` and only when the table's record says the same step (on behalf of the same
    caller, see ``_core.records.made_within``) wrote it under the same key; entries of the
    user's, of :func:`histoexpr.tl.embed` or of another key are never replaced. With ``model``
    (the kind of bag model, its ``metadata["model"]``), neither are those a record says another
    kind of model wrote. Call this before writing anything, so that a refused call leaves every
    section as it was.
    """
    own, foreign = {}, []
    for name, table in tables.items():
        mine, theirs = _taken(table, key_added, overwrite=overwrite, model=model)
        if mine:
            own[name] = mine
        foreign += [f"{name!r}: {entry}" for entry in theirs]
    if foreign:
        listed = shown(foreign, sep="; ")
        raise KeyError(
            f"The tile tables already hold entries that {step} would write under "
            f"key_added={key_added!r} and that {step} did not write there: {listed}. They are "
            f"never replaced, even with overwrite=True (which replaces only what {step} wrote "
            f"under the same key); choose another key_added, e.g. "
            f"{_free_key(tables, key_added)!r}.")
    if own:
        names = list(own)
        listed = shown([repr(n) for n in names], 5)
        raise KeyError(
            f"The tile tables of {listed} already hold the outputs {step} wrote under "
            f"key_added={key_added!r} ({', '.join(own[names[0]])}). Pass overwrite=True to "
            "replace them, or choose another key_added.")


def check_results_writable(stores: Mapping, names: list[str], tiles_key: str, key_added: str,
                           *, overwrite: bool) -> None:
    """Raise a ``KeyError`` before any store is written where one may not take the results.

    The slide-store counterpart of :func:`check_outputs_writable` (see
    :meth:`histoexpr.io.SlideStore.check_results_writable`).
    """
    writer = WriterRecord.now(STEP, key_added)
    for name in names:
        stores[name].check_results_writable(tiles_key, key_added, writer=writer,
                                            overwrite=overwrite)


def _record_outputs(table, key_added: str, model: str | None = None) -> None:
    records = dict(table.uns.get(BAG_OUTPUTS) or {})
    records[key_added] = bag_outputs_record(WriterRecord.now(STEP, key_added), key_added)
    if model is not None:  # the kind of bag model: another kind does not replace them
        records[key_added]["model"] = model
    table.uns[BAG_OUTPUTS] = records


def _class_slices(metadata: dict) -> list[slice]:
    slices, start = [], 0
    for target in metadata["targets"]:
        size = len(metadata["classes"][target])
        slices.append(slice(start, start + size))
        start += size
    return slices


def _has_genes(bags: Bags, rule: dict) -> bool:
    return all(set(r["genes"]) <= set(bags.bulk.var_names) for r in rule.values())


def write_contributions(bags: Bags, contributions: dict[str, np.ndarray], *, columns: list[str],
                        key_added: str) -> None:
    """Per-tile contributions into ``obsm[f"{key_added}_contribution"]`` of each tile table.

    After :func:`write_predictions`, which checked and recorded the entry in every section.
    Sections in memory only: a cohort on disk keeps per-tile outputs and attention in its slide
    stores, which hold no contribution map.
    """
    import pandas as pd

    for name, values in contributions.items():
        table = bags.sections[name].tables[f"{bags.tiles_key}_table"]
        table.obsm[f"{key_added}_contribution"] = pd.DataFrame(values, index=table.obs_names,
                                                               columns=columns)


def _check_features(model, bags: Bags) -> None:
    meta = model.metadata
    width = tile_features(next(iter(bags.sections.values())), bags.tiles_key,
                          bags.features_key).shape[1]
    if width != meta["n_features"]:
        raise ValueError(f"The model was trained on {meta['n_features']} features per tile "
                         f"({meta['features_key']!r}, encoder {meta['encoder']!r}) but "
                         f"{bags.features_key!r} has {width}; embed with the same encoder.")
    encoder = encoder_of(bags)
    if meta.get("encoder") and encoder and encoder != meta["encoder"]:
        raise ValueError(f"The model was trained on features of encoder {meta['encoder']!r}, "
                         f"but {bags.features_key!r} comes from {encoder!r}.")
    # a field the model's record lacks (a file of an earlier version: e.g. no transform) or the
    # features' record lacks (the user's own) is not held against them
    trained, now = meta.get("features_made") or {}, features_made(bags)
    fields = set(trained) & set(now) & set(MADE_FIELDS)
    differ = EmbeddingRecord.from_uns(now).differences(
        EmbeddingRecord.from_uns(trained), fields=fields, across_sections=True)
    if differ:
        raise ValueError(
            f"The tile features {bags.features_key!r} were made otherwise than the model's "
            f"training features ({'; '.join(differ)}): embed these tiles as the training tiles "
            "were (the training encoder, on tiles of the training pixel size and width, with the "
            "training stain normalisation or none) with hx.tl.embed, under another key_added, "
            "and pass that features_key.")


def _score_section(model, sdata, bags: Bags) -> tuple[np.ndarray, np.ndarray]:
    """Attention scores and raw outputs of every tile of a section (standardised features)."""
    meta = model.metadata
    features = tile_features(sdata, bags.tiles_key, bags.features_key)
    features = (features - np.asarray(meta["feature_mean"], dtype=np.float32)) / np.asarray(
        meta["feature_std"], dtype=np.float32)
    device = next(model.parameters()).device
    model.eval()
    scores, outputs = [], []
    with torch.inference_mode():
        for start in range(0, len(features), 8192):
            chunk = torch.from_numpy(features[start: start + 8192]).to(device).unsqueeze(0)
            s, o = model.score_tiles(chunk)
            scores.append(s[0].float().cpu().numpy())
            outputs.append(o[0].float().cpu().numpy())
    return np.concatenate(scores).astype(np.float64), np.concatenate(outputs).astype(np.float64)


def _softmax(scores: np.ndarray) -> np.ndarray:
    weights = np.exp(scores - scores.max(axis=0))
    return weights / weights.sum(axis=0)


def _weights(scores: np.ndarray, n_outputs: int) -> np.ndarray:
    """A bag's attention (softmax over its tiles) repeated for each output of its branch."""
    return np.repeat(_softmax(scores), n_outputs // scores.shape[1], axis=1)


def _readable(outputs: np.ndarray, meta: dict) -> np.ndarray:
    """Expression in target units, or class probabilities, from raw network outputs."""
    if meta["task"] == "regression":
        return outputs * np.asarray(meta["target_std"]) + np.asarray(meta["target_mean"])
    probabilities = np.empty_like(outputs)
    for s in _class_slices(meta):
        probabilities[:, s] = _softmax(outputs[:, s].T).T
    return probabilities


def _measured(bags: Bags, meta: dict) -> np.ndarray | None:
    if meta["task"] != "regression" or not set(meta["genes"]) <= set(bags.bulk.var_names):
        return None
    values, _ = regression_targets(bags, meta["genes"], meta["target_transform"])
    return values


def _add_classes(result, meta: dict) -> None:
    import pandas as pd

    for target, s in zip(meta["targets"], _class_slices(meta), strict=True):
        classes = meta["classes"][target]
        best = np.asarray(result.X)[:, s].argmax(axis=1)
        result.obs[f"{target}_pred"] = pd.Categorical(np.asarray(classes, dtype=object)[best],
                                                      categories=classes)


def write_predictions(bags: Bags, tile_outputs: dict[str, np.ndarray],
                      tile_attention: dict[str, np.ndarray], *, columns: list[str],
                      branches: list[str], key_added: str, overwrite: bool,
                      model: str | None = None) -> None:
    """Per-tile outputs and section-normalised attention into each section's tile table.

    Sections in memory only: a cohort on disk gets each slide's results in its store as soon
    as the slide is scored (:func:`write_store_results`, every store checked first by
    :func:`check_stores_writable`). ``model``: the kind of bag model (its
    ``metadata["model"]``), recorded with the outputs so that another kind of model does not
    replace them (see :func:`check_outputs_writable`).
    """
    import pandas as pd

    tables = {name: bags.sections[name].tables[f"{bags.tiles_key}_table"]
              for name in tile_outputs}
    # every entry of every section is checked before any is written
    check_outputs_writable(tables, key_added, overwrite=overwrite, model=model)
    for name, outputs in tile_outputs.items():
        table = tables[name]
        replaced = [n for kind, names in bag_output_entries(key_added).items() for n in names
                    if n in getattr(table, kind)]
        if replaced:
            logger.info("Overwriting %s of the tile table of %r (written by %s)", replaced, name,
                        STEP)
        attention = tile_attention[name]
        table.obsm[key_added] = pd.DataFrame(outputs, index=table.obs_names, columns=columns)
        table.obsm[f"{key_added}_attention"] = pd.DataFrame(attention, index=table.obs_names,
                                                            columns=branches)
        table.obs[f"{key_added}_attention"] = attention.mean(axis=1)
        _record_outputs(table, key_added, model)
        log_added("tables", f"{bags.tiles_key}_table", f"{name}: obsm[{key_added!r}] per-tile "
                  f"outputs, obsm/obs[{key_added + '_attention'!r}] attention")


def check_stores_writable(bags: Bags, names: list[str], key_added: str, *,
                          overwrite: bool) -> None:
    """Refuse, before the first slide store is written, where any may not take the results.

    For a cohort on disk (``bags.stores``): ``key_added`` must name a set of results in a slide
    store, must not name the stored tile features of any slide (the results come back as
    ``obsm`` entries of the opened slide's tile table: never over its features), and every
    store of ``names`` must accept results under it (:func:`check_results_writable`). Under
    torchrun every process predicts the same values: each checks the stores, rank 0 alone then
    writes them (:func:`write_store_results`) and :func:`finish_store_results` waits for it
    before any process reads them again.
    """
    check_store_name("key_added", key_added, what="set of results in a slide store")
    _distributed.context()
    entries = set(bag_output_entries(key_added)["obsm"])
    shadowed = sorted({(name, key) for name in names
                       for key in bags.stores[name].feature_records(bags.tiles_key)
                       if key in entries})
    if shadowed:
        raise KeyError(f"key_added={key_added!r} would put results over the tile features "
                       f"{shadowed[0][1]!r} of the store of {shadowed[0][0]!r} (written by "
                       "hx.tl.embed); they are never replaced, even with overwrite=True; "
                       "choose another key_added.")
    check_results_writable(bags.stores, names, bags.tiles_key, key_added, overwrite=overwrite)
    _distributed.barrier()


def write_store_results(bags: Bags, name: str, outputs: np.ndarray, attention: np.ndarray, *,
                        columns: list[str], branches: list[str], key_added: str,
                        overwrite: bool, model: dict[str, Any] | None = None) -> None:
    """One slide's per-tile outputs and attention into its store (rank 0 alone writes).

    After :func:`check_stores_writable` checked every store, so that a slide is written as soon
    as it is scored and no more than one slide's per-tile results are held at once. ``model``:
    the model's identity (:func:`model_identity`), recorded with them.
    """
    if _distributed.is_main_process():
        bags.stores[name].write_results(bags.tiles_key, key_added, outputs, attention,
                                        columns=columns, branches=branches,
                                        writer=WriterRecord.now(STEP, key_added),
                                        overwrite=overwrite, model=model)


def finish_store_results(bags: Bags, key_added: str, n_slides: int,
                         model: dict[str, Any] | None = None) -> None:
    """After the last slide's results: wait for rank 0's writes, drop the stale opened slide.

    Other stores of the same folder (slides this call was not given, e.g. the rest of a
    cohort predicted on ``cohort.subset(...)``) that hold results ``key_added`` of another
    model (or run) are named in a warning: opening those slides together refuses the mixture.
    """
    from ...io import SlideStore

    _distributed.barrier()
    bags.sections.forget()
    logger.info("Adding per-tile outputs and attention %r to the stores of %d slides",
                key_added, n_slides)
    if model is None or _RUN.get() is not None or not bags.stores:  # a run of several calls
        return
    folder = next(iter(bags.stores.values())).path.parent
    mine = {store.path.name for store in bags.stores.values()}
    others = [path.name.removesuffix(".zarr") for path in sorted(folder.glob("*.zarr"))
              if path.name not in mine and (made := SlideStore(path).results_model(
                  bags.tiles_key, key_added)) is not None and made.get("run") != model["run"]]
    if others:
        logger.warning(
            "Other slides' stores in %s hold per-tile results %r of another model or run (%s): "
            "a cohort holding them and these slides refuses to open them (one key, two "
            "models). Predict them with the same model (overwrite=True), or use another "
            "key_added.", folder, key_added, shown([repr(o) for o in others], 5))


def bag_table(bags: Bags, values: np.ndarray, columns: list[str], *,
              measured: np.ndarray | None) -> AnnData:
    """Bags x outputs AnnData with the bags' obs (and the measured values in a layer)."""
    import anndata as ad
    import pandas as pd

    obs = bags.bulk.obs.copy()
    obs["n_tiles"] = [len(r) for r in bags.rows]
    adata = ad.AnnData(X=values.astype(np.float32), obs=obs,
                       var=pd.DataFrame(index=pd.Index(columns)))
    if measured is not None:
        adata.layers["measured"] = measured.astype(np.float32)
    return adata
