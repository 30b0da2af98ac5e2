"""``hx.tl.benchmark``: encoders x heads for spot expression, nested, with the peer in the run.

Leave one group (patient or section) out; in each fold the genes are chosen on the training
sections, every head is trained by ``hx.tl.fit(..., model="spot_regressor")`` (ridge penalty by
inner leave-one-section-out on the training sections) and applied with ``hx.tl.predict``; each
held-out section is scored alone, and all held-out spots together (pooled).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._core.logs import each_item, logger, progress
from .._metrics._expression_metrics import expression_pairs, gene_correlations
from .._sections import as_sections, check_no_copies
from ._cross_validate import _fold_genes

if TYPE_CHECKING:
    import pandas as pd
    from spatialdata import SpatialData

#: the peer: squidpy's features, PCA to this many components, ridge (HEST's baseline recipe)
PEER_COMPONENTS = 30
PEER = ("squidpy", f"peer: PCA ({PEER_COMPONENTS}) + ridge")
HEAD_ROUTES = ("ridge", "mlp")
#: options of the call itself, never of a head
_CALL_OPTIONS = ("genes", "gene_flavor", "encoder", "features_key", "image_key", "spots_key",
                 "table_key", "tiles_key", "size_um", "mpp", "candidates", "ssl_encoder",
                 "pretrain_tiles_key", "pretrain_epochs", "subspot_um", "calibrate")


@dataclass(frozen=True, kw_only=True)
class BenchmarkResult:
    """What :func:`histoexpr.tl.benchmark` measured: a summary and the values behind it.

    Parameters
    ----------
    table
        One row per encoder and head (the peer its own row): the summary.
    sections
        One row per encoder, head and held-out section.
    genes
        One row per encoder, head, scope (a held-out section, or ``"pooled"``) and gene.
    timing
        One row per encoder and section: the CPU and wall seconds of its features.
    settings
        The call's settings (genes per fold, groups, tile size and pixel size, heads).
    """

    table: pd.DataFrame
    sections: pd.DataFrame
    genes: pd.DataFrame
    timing: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"BenchmarkResult (hx.tl.benchmark)\n{self.table.to_string()}"

    def _repr_html_(self) -> str:
        return self.table._repr_html_()


def benchmark(
    data: Sequence[SpatialData] | Mapping[str, SpatialData],
    *,
    encoders: Sequence[str] = ("handcrafted",),
    heads: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("ridge",),
    n_genes: int = 50,
    gene_flavor: str = "top_expressed",
    groups: Mapping[str, str] | None = None,
    peer: bool = True,
    size_um: float = 112.0,
    mpp: float | None = None,
    image_key: str = "he",
    spots_key: str = "spots",
    table_key: str = "table",
    tiles_key: str = "spot_tiles",
    seed: int = 0,
) -> BenchmarkResult:
    """Compare tile encoders x heads for spot expression, nested, with the peer in the same run.

    Folds leave one group out (``groups``: a patient, or each section alone). In each fold:

    1. the genes are chosen on the training sections only: the ``n_genes`` best by
       ``gene_flavor`` (:func:`histoexpr.pp.select_genes`; ``"top_expressed"``: the highest
       mean log1p-normalised expression of the training spots), so a gene that is high only
       in the held-out section is never chosen for its sake;
    2. every encoder x head is trained on the training sections by
       ``hx.tl.fit(..., model="spot_regressor", route=<head>)``; the ridge penalty is chosen by
       inner leave-one-section-out on the training sections (5 spot folds with one training
       section), never on the held-out one; the MLP head stops early on a random
       ``val_fraction`` of the training spots;
    3. the model predicts the spot-centred tiles of each held-out section
       (:func:`histoexpr.tl.predict`) and is scored against the measured spots
       (log1p-normalised counts, as :func:`histoexpr.tl.evaluate`).

    Every section's features are computed once per encoder (the tiles are the same in every
    fold, and no encoder learns from the data) and reused by every head and fold; their CPU
    and wall time is reported per encoder. Nothing is written into the sections given: tiles,
    features and predictions live in light copies for the call.

    What each number is (``table``):

    - ``pearson_per_section``: for each held-out section, the Pearson correlation of each gene
      between predicted and measured expression over that section's spots, averaged over the
      fold's genes; then the mean over the held-out sections. ``_sd``, ``_min`` and ``_max``
      are the spread of the per-section values (standard deviation with ``n - 1``). This is
      the HEST score (``hx.tl.cross_validate``'s ``frame.groupby("fold")["pearson"].mean()``).
    - ``pearson_pooled``: for each gene chosen in every fold, one Pearson correlation over the
      spots of all held-out sections together (each predicted by its own fold's model), then
      the mean over those genes (``n_genes_pooled`` of them). Pooling adds the differences
      between sections to the variance: a model that gets each section's level right scores
      higher pooled than per section, and a section-wide offset in the predictions (or in the
      sequencing depth) lowers it however well the pattern within each section is predicted.
      The two answer different questions (within a section: where is the gene high; across
      sections: which section and spot), so neither replaces the other.
    - ``pearson_libreg_per_section``, ``pearson_libreg_pooled``: the same after regressing the
      log library size out of prediction and measurement (depth is not what a model should be
      credited for).
    - ``features_cpu_s``, ``features_wall_s``: the encoder's features of all sections (the
      peer's squidpy features are shared with encoder ``"squidpy"`` when both are asked);
      ``fit_cpu_s``, ``fit_wall_s``: training and predicting, summed over the folds.

    Parameters
    ----------
    data
        At least two sections by name (a mapping) or a list of them, each with an image, spots
        and a spot table of raw counts.
    encoders
        Tile encoders: ``"handcrafted"``, ``"squidpy"``, combinations such as
        ``"squidpy+handcrafted"``, ``"random_cnn"`` (the small CNN of ``route="auto"`` at its
        seeded random initialisation), or a model file of a trained encoder (``.pt``).
    heads
        Route names (``"ridge"``, ``"mlp"``), or labels mapped to the options of each head,
        e.g. ``{"ridge": {}, "ridge, context": {"route": "ridge", "context_um": (300, 600),
        "standardise_sections": True}}`` (any option of
        :class:`~histoexpr.tl.SpotRegressorOptions` but those this call sets).
    n_genes
        Genes per fold, chosen on its training sections.
    gene_flavor
        How the genes are ranked, as :func:`histoexpr.pp.select_genes` takes it.
    groups
        The group (patient) of every section: a fold holds out one group. ``None`` holds out one
        section at a time.
    peer
        Also measure the peer, squidpy's features + PCA (30) + ridge, in the same folds.
    size_um
        Width of the spot-centred tiles in um.
    mpp
        Pixel size the tiles are read at (um/px); ``None``: the coarsest of the images'.
    image_key
        Key of the H&E images.
    spots_key
        Key of the spots.
    table_key
        Key of the spot tables (raw counts).
    tiles_key
        Key of the spot tiles (in the copies; tiles the sections hold there already, made alike,
        are reused, with their features).
    seed
        Random seed of every head and of the random CNN.

    Returns
    -------
    A :class:`~histoexpr.tl.BenchmarkResult`: ``table`` (one row per encoder and head, the peer
    flagged in ``peer``), ``sections`` (each held-out section's mean Pearson), ``genes`` (each
    gene's scores per section and pooled), ``timing`` (features per encoder and section).
    ``hx.pl.benchmark(result)`` draws it.

    Examples
    --------
    >>> result = hx.tl.benchmark({"C2": c2, "C3": c3, "C4": c4},
    ...                          encoders=["handcrafted", "squidpy", "random_cnn"],
    ...                          heads=["ridge", "mlp"], size_um=192, mpp=1.0)
    >>> result.table[["encoder", "head", "pearson_per_section", "pearson_pooled"]]

    """
    import pandas as pd

    from ._options import SpotRegressorOptions
    from ._spot_inputs import _require_spot_inputs, _training_mpp

    sections = as_sections(data)
    group_of = _check_groups(sections, groups)
    peer = _check_options(n_genes=n_genes, peer=peer, size_um=size_um, mpp=mpp, seed=seed)
    encoder_specs = _check_encoders(encoders)
    head_specs = _check_heads(heads)
    configs = [(e, h, False) for e in encoder_specs for h in head_specs]
    if peer:
        configs.append((*PEER, True))
        encoder_specs.setdefault(PEER[0], "squidpy")
        head_specs[PEER[1]] = {"route": "ridge", "n_components": PEER_COMPONENTS}
    for name, section in sections.items():
        _require_spot_inputs(section, name, image_key, spots_key, table_key)
    mpp = _training_mpp(sections, image_key, mpp)
    common = {"tiles_key": tiles_key, "image_key": image_key, "spots_key": spots_key,
              "table_key": table_key, "size_um": float(size_um), "mpp": mpp, "seed": seed,
              "calibrate": False}
    options = {(e, h): SpotRegressorOptions(  # every option checked before the first fold
        encoder=encoder_specs[e], features_key=_features_key(e, encoder_specs[e], seed),
        **common, **head_specs[h]) for e, h, _ in configs}
    check_no_copies(sections, group_of)
    folds = list(dict.fromkeys(group_of[name] for name in sections))
    fold_genes = {fold: _fold_genes({n: s for n, s in sections.items() if group_of[n] != fold},
                                    table_key, n_genes, gene_flavor)  # checks gene_flavor
                  for fold in folds}  # from the tables alone, before any tile is made
    work = _tiled_copies(sections, common)
    timing = _features(work, encoder_specs, common)
    per_gene, pooled, spent = [], {}, {}
    for number, fold in enumerate(progress(folds, desc="folds", total=len(folds)), start=1):
        train = {n: s for n, s in work.items() if group_of[n] != fold}
        held_out = [n for n in sections if group_of[n] == fold]
        genes = fold_genes[fold]
        for (encoder, head), option in options.items():
            began, cpu = time.perf_counter(), time.process_time()
            scored = _fit_and_score(train, {n: work[n] for n in held_out}, option, genes,
                                    table_key)
            wall, cpu = time.perf_counter() - began, time.process_time() - cpu
            seconds = spent.setdefault((encoder, head), [0.0, 0.0])
            seconds[0], seconds[1] = seconds[0] + cpu, seconds[1] + wall
            for name, (frame, pairs) in scored.items():
                per_gene.append(frame.reset_index().assign(encoder=encoder, head=head,
                                                           fold=fold, scope=name))
                pooled.setdefault((encoder, head), []).append(pairs)
            logger.info("Fold %d/%d (%s), %s / %s: mean Pearson %s.", number, len(folds), fold,
                        encoder, head, ", ".join(f"{n} {f['pearson'].mean():.3f}"
                                                 for n, (f, _) in scored.items()))
    genes_frame = pd.concat(per_gene, ignore_index=True)
    for (encoder, head), parts in pooled.items():
        genes_frame = pd.concat([genes_frame, _pooled(parts).reset_index().assign(
            encoder=encoder, head=head, fold="all", scope="pooled")], ignore_index=True)
    genes_frame = genes_frame[["encoder", "head", "fold", "scope", "gene",
                               *[c for c in genes_frame if c not in
                                 ("encoder", "head", "fold", "scope", "gene")]]]
    section_frame = _section_table(genes_frame)
    table = _summary(configs, section_frame, genes_frame, timing, spent, n_genes)
    settings = {"n_genes": n_genes, "gene_flavor": gene_flavor, "groups": dict(group_of),
                "size_um": float(size_um), "mpp": mpp, "seed": seed,
                "heads": {h: dict(v) for h, v in head_specs.items()},
                "encoders": {e: v for e, v in encoder_specs.items()}}
    return BenchmarkResult(table=table, sections=section_frame, genes=genes_frame, timing=timing,
                           settings=settings)


def _check_options(*, n_genes, peer, size_um, mpp, seed) -> bool:
    """Check the call's own numbers and flags before any work; ``peer`` as a bool.

    ``gene_flavor`` is checked by choosing every fold's genes, also before any work.
    """
    from ..._core.validate import check_bool, check_int, check_positive

    check_int("n_genes", n_genes, minimum=1)
    check_positive("size_um", size_um, unit="um")
    if mpp is not None:
        check_positive("mpp", mpp, unit="um/px (or None)")
    check_int("seed", seed)
    return check_bool("peer", peer)


def _check_groups(sections: Mapping[str, Any], groups) -> dict[str, str]:
    if len(sections) < 2:
        raise ValueError(f"benchmark leaves sections out, so it needs at least two; got "
                         f"{len(sections)} ({list(sections)}). Give every section of the data "
                         "set (a dict of them by name).")
    if groups is None:
        return {name: name for name in sections}
    if not isinstance(groups, Mapping):
        raise TypeError(f"groups must map each section's name to its group (patient), e.g. "
                        f"{{'C2': 'patient C', ...}}; got a {type(groups).__name__}.")
    group_of = {str(k): str(v) for k, v in groups.items()}
    missing = [n for n in sections if n not in group_of]
    unknown = [n for n in group_of if n not in sections]
    if missing or unknown:
        raise ValueError(f"groups does not match the sections: no group for {missing}, groups "
                         f"for sections not given {unknown} (sections: {list(sections)}). Give "
                         "one group per section, keyed by the sections' names.")
    if len(set(group_of.values())) < 2:
        raise ValueError("benchmark needs at least two groups (patients or sections) to hold "
                         "one out; groups puts every section in one. Give each patient its "
                         "own group, or groups=None to hold out one section at a time.")
    return group_of


def _check_encoders(encoders: Sequence[str]) -> dict[str, Any]:
    """Each encoder's label and the ``encoder=`` argument of the spot regressor for it."""
    from pathlib import Path

    from ._spot_auto import NETWORK_ENCODERS

    named = ("handcrafted", "squidpy")
    if isinstance(encoders, str):
        encoders = [encoders]
    if not encoders:
        raise ValueError("encoders is empty: give at least one, e.g. ['handcrafted'].")
    specs: dict[str, Any] = {}
    for encoder in encoders:
        label = str(encoder)
        parts = label.split("+")
        if label == "ssl":
            raise ValueError(
                "encoder 'ssl' is pretrained on the training sections inside each fold, so its "
                "features differ per fold; benchmark computes each section's features once. "
                "Pass a pretrained encoder's model file (hx.tl.pretrain, hx.io.save_model), "
                "'random_cnn', or measure 'ssl' with hx.tl.cross_validate(..., route='auto').")
        if label in NETWORK_ENCODERS:
            specs[label] = label
        elif label.endswith(".pt"):
            if not Path(label).is_file():
                raise FileNotFoundError(f"The encoder file {label!r} does not exist.")
            specs[label] = label
        elif all(part in named for part in parts) and len(set(parts)) == len(parts):
            specs[label] = parts[0] if len(parts) == 1 else parts
        else:
            raise ValueError(f"Unknown encoder {label!r}: give 'handcrafted', 'squidpy', a "
                             "combination such as 'squidpy+handcrafted', 'random_cnn', or a "
                             "trained encoder's model file (.pt).")
    if len(specs) < len(encoders):
        raise ValueError(f"encoders names an encoder twice: {list(encoders)}.")
    return specs


def _check_heads(heads) -> dict[str, dict[str, Any]]:
    """Each head's label and its options (``route`` among them)."""
    if isinstance(heads, str):
        heads = [heads]
    specs = ({str(k): dict(v) for k, v in heads.items()} if isinstance(heads, Mapping)
             else {str(h): {"route": str(h)} for h in heads})
    if not specs:
        raise ValueError("heads is empty: give at least one, e.g. ['ridge'].")
    if isinstance(heads, Sequence) and len(specs) < len(heads):
        raise ValueError(f"heads names a head twice: {list(heads)}.")
    for label, spec in specs.items():
        spec.setdefault("route", "ridge" if isinstance(heads, Mapping) else label)
        if spec["route"] not in HEAD_ROUTES:
            raise ValueError(
                f"Unknown head {label!r} (route {spec['route']!r}): benchmark compares heads on "
                f"frozen encoders, {HEAD_ROUTES}. The end-to-end 'cnn' and the searching "
                "'auto' route are measured with hx.tl.cross_validate(model='spot_regressor').")
        clash = sorted(set(spec) & set(_CALL_OPTIONS))
        if clash:
            raise ValueError(f"Head {label!r} sets {clash}, which benchmark sets itself for "
                             "every head; pass them to benchmark (encoders=, n_genes=, size_um=, "
                             "...) instead.")
    return specs


def _features_key(label: str, encoder: Any, seed: int) -> str | None:
    """The obsm key the spot regressor reads an encoder's features from."""
    from ._spot_auto import NETWORK_ENCODERS

    if label in NETWORK_ENCODERS:
        return None  # the network's own key, a digest of its weights
    from ._spot_inputs import _encoder_name

    return f"X_{_encoder_name(encoder)}"


def _tiled_copies(sections: Mapping[str, Any], common: Mapping[str, Any]) -> dict[str, Any]:
    """Light copies of the sections with spot tiles under ``tiles_key`` (made, or reused)."""
    from ..._core.records import made_within
    from ...pp import tile
    from ._cross_validate import _working_copy
    from ._spot_inputs import WITHIN, tile_differences

    key = common["tiles_key"]
    geometry = {"image_key": common["image_key"], "size_um": common["size_um"],
                "mpp": common["mpp"], "centres": common["spots_key"]}
    for name, sdata in sections.items():
        if key in sdata.shapes:
            differences = tile_differences(sdata, key, **geometry)
            if differences:
                raise ValueError(f"The tiles {key!r} of section {name!r} differ from the "
                                 f"benchmark's ({'; '.join(differences)}); pass another "
                                 "tiles_key to make matching ones.")
    work = {name: _working_copy(sdata) for name, sdata in sections.items()}
    for sdata in work.values():
        if key not in sdata.shapes:
            with made_within(WITHIN):  # tiles the spot regressor may remake
                tile(sdata, common["image_key"], size_um=common["size_um"], mpp=common["mpp"],
                     centres=common["spots_key"], min_tissue=0, key_added=key)
    return work


def _features(work: Mapping[str, Any], specs: Mapping[str, Any], common) -> pd.DataFrame:
    """Every section's features of every encoder, once, timed (CPU and wall seconds)."""
    import pandas as pd

    from ._spot_auto import NETWORK_ENCODERS, _Features
    from ._spot_features import section_features

    networks = _Features([], tiles_key=common["tiles_key"], image_key=common["image_key"],
                         mpp=common["mpp"], ssl_encoder=None, pretrain_tiles_key=None,
                         pretrain_epochs=None, batch_size=64, device=None, seed=common["seed"])
    rows = []
    for label, encoder in specs.items():
        network = label in NETWORK_ENCODERS
        key = networks.key(label) if network else _features_key(label, encoder, common["seed"])
        argument = networks.encoder_argument(label) if network else encoder
        for name, sdata in progress(list(work.items()), desc=f"features {label}"):
            table = sdata.tables[f"{common['tiles_key']}_table"]
            reused = key in table.obsm
            began, cpu = time.perf_counter(), time.process_time()
            with each_item():
                section_features(sdata, common["tiles_key"], encoder=argument, features_key=key,
                                 image_key=common["image_key"])
            rows.append({"encoder": label, "section": name, "n_tiles": table.n_obs,
                         "cpu_s": time.process_time() - cpu,
                         "wall_s": time.perf_counter() - began, "reused": reused})
    return pd.DataFrame(rows)


def _fit_and_score(train, held_out, options, genes: list[str], table_key: str
                   ) -> dict[str, tuple]:
    """Train one head on the training sections; each held-out section's scores and pairs."""
    from dataclasses import replace

    from ._cross_validate import _free_key
    from ._spot_regressor import fit, predict

    with each_item():
        model = fit(train, options=replace(options, genes=list(genes)))
    out = {}
    for name, sdata in held_out.items():
        key = _free_key(sdata, "benchmark_expression")
        with each_item():
            predict(model, sdata, tiles_key=options.tiles_key, key_added=key)
            predicted, measured, library, genes = expression_pairs(sdata, key, table_key)
        del sdata.tables[key]  # the copy's own table, written just above
        frame = gene_correlations(predicted, measured, genes=genes, library_size=library)
        out[name] = (frame, (predicted, measured, library, genes))
    return out


def _pooled(parts: list[tuple]) -> pd.DataFrame:
    """Per-gene scores over all held-out spots together, for the genes of every fold."""
    common = [g for g in parts[0][3] if all(g in p[3] for p in parts[1:])]
    columns = [[p[3].index(g) for g in common] for p in parts]
    predicted = np.vstack([p[0][:, c] for p, c in zip(parts, columns, strict=True)])
    measured = np.vstack([p[1][:, c] for p, c in zip(parts, columns, strict=True)])
    library = np.concatenate([p[2] for p in parts])
    return gene_correlations(predicted, measured, genes=common, library_size=library)


def _section_table(genes: pd.DataFrame) -> pd.DataFrame:
    per = genes[genes["scope"] != "pooled"]
    frame = per.groupby(["encoder", "head", "fold", "scope"], sort=False).agg(
        pearson=("pearson", "mean"), pearson_libreg=("pearson_libreg", "mean"),
        spearman=("spearman", "mean"), n_genes=("gene", "size")).reset_index()
    return frame.rename(columns={"scope": "section"})


def _summary(configs, sections: pd.DataFrame, genes: pd.DataFrame, timing: pd.DataFrame,
             spent: Mapping, n_genes: int) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for encoder, head, is_peer in configs:
        one = sections[(sections["encoder"] == encoder) & (sections["head"] == head)]
        pooled = genes[(genes["encoder"] == encoder) & (genes["head"] == head)
                       & (genes["scope"] == "pooled")]
        features = timing[timing["encoder"] == encoder]
        values = one["pearson"].to_numpy()
        rows.append({
            "encoder": encoder, "head": head, "peer": is_peer,
            "pearson_per_section": values.mean(),
            "pearson_per_section_sd": values.std(ddof=1) if len(values) > 1 else np.nan,
            "pearson_per_section_min": values.min(), "pearson_per_section_max": values.max(),
            "pearson_pooled": pooled["pearson"].mean(),
            "pearson_libreg_per_section": one["pearson_libreg"].mean(),
            "pearson_libreg_pooled": pooled["pearson_libreg"].mean(),
            "n_sections": len(values), "n_genes": n_genes, "n_genes_pooled": len(pooled),
            "features_cpu_s": features["cpu_s"].sum(), "features_wall_s": features["wall_s"].sum(),
            "fit_cpu_s": spent[(encoder, head)][0], "fit_wall_s": spent[(encoder, head)][1]})
    return pd.DataFrame(rows)
