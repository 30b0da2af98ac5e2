"""Attention MIL on tile features (Graziani et al. 2022; HistCode): ``model="abmil"``.

Train with ``hx.tl.fit(bags_or_cohort, model="abmil", ...)``; apply with ``hx.tl.predict``. The
bags are the slides of a :class:`~histoexpr.io.Cohort` or the pseudo-bulk bags of
:func:`histoexpr.pp.pseudobulk`; tiles must be embedded first (:func:`histoexpr.tl.embed`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..._core.seeds import seed_everything
from ..._core.validate import check_store_name
from ._bag_data import collect_bags
from ._bag_outputs import (
    _add_classes,
    _check_features,
    _class_slices,
    _has_genes,
    _measured,
    _readable,
    _score_section,
    _softmax,
    _weights,
    bag_table,
    check_stores_writable,
    finish_store_results,
    model_identity,
    write_contributions,
    write_predictions,
    write_store_results,
)
from ._bag_targets import rule_labels, standardised_features, training_data
from ._options import ABMILOptions

if TYPE_CHECKING:
    from anndata import AnnData

    from ...models import Network


def fit(data: Any, options: ABMILOptions) -> Network:
    """Train a gated attention MIL network on bags of tile features.

    Regression learns the bags' expression of ``genes`` (MSE on per-gene standardised
    ``log1p`` values); classification learns one or more label columns of the bulk table
    (cross-entropy summed over them), e.g. a diagnosis or the up / down labels of
    :func:`histoexpr.pp.deg_labels`. The slide (bag) output is the attention-weighted average of
    the per-tile outputs. Bags with a missing target are left out (logged). With
    ``attention_entropy > 0`` the training loss also penalises uneven attention (its entropy
    below ``log n``), so the attention departs from an even share only where that lowers the
    task loss, and the contribution map keeps the ranking of the tiles' own outputs.

    Classification labels can also be made from the bags' expression as HistCode labels driver
    genes (``labels="median"``): a bag is ``"up"`` where its log1p-normalised expression of a
    gene (or the mean standardised expression of a set of marker genes, e.g. a tumour score) is
    above the median over the *training* bags, ``"down"`` otherwise. The thresholds are kept in
    the model, so :func:`histoexpr.tl.predict` labels held-out bags with the training
    thresholds (nothing is chosen on the bags it scores).

    Parameters
    ----------
    data
        A :class:`~histoexpr.io.Cohort` (one bag per slide, targets from ``cohort.bulk``), a
        SpatialData with pseudo-bulk bags (:func:`histoexpr.pp.pseudobulk`) or a mapping of such
        sections by name.
    options
        The model's options, each documented in :class:`~histoexpr.tl.ABMILOptions`.
        ``hx.tl.fit(data, model=..., **options)`` builds them from keywords and
        records them in ``metadata["options"]``.

    Returns
    -------
    The trained :class:`histoexpr.models.AttentionMIL`; its ``metadata`` records the genes (or
    the classes of each target), the features and their standardisation and the training
    ``history``.

    """
    from ...models import AttentionMIL
    from .._train import train

    bags, y, metadata = training_data(
        data, genes=options.genes, target=options.target, task=options.task,
        tiles_key=options.tiles_key, features_key=options.features_key,
        bags_key=options.bags_key, target_transform=options.target_transform,
        labels=options.labels)
    rng = seed_everything(options.seed)
    features = standardised_features(bags, metadata)
    n_outputs = len(metadata["columns"])
    n_branches = len(metadata["branches"]) if options.per_gene else 1
    if options.per_gene and options.task == "classification" and len({len(c) for c in
                                                       metadata["classes"].values()}) > 1:
        raise ValueError("per_gene=True needs the same number of classes in every target; "
                         "train the targets separately.")
    metadata["branches"] = metadata["branches"] if options.per_gene else ["attention"]
    network = AttentionMIL(in_features=features[0].shape[1], n_outputs=n_outputs,
                           hidden=options.hidden, attention_hidden=options.attention_hidden,
                           dropout=options.dropout,
                           n_branches=n_branches)
    order = rng.permutation(len(features))
    n_val = int(round(options.val_fraction * len(features)))
    if options.val_fraction > 0 and (n_val < 1 or len(features) - n_val < 1):
        raise ValueError(f"{len(features)} bags are too few to hold out val_fraction="
                         f"{options.val_fraction} for early stopping; pass val_fraction=0.")
    val, train_ids = order[:n_val], order[n_val:]
    batch_size = options.batch_size
    loader = _loader(features, y, train_ids, batch_size, options.max_tiles, shuffle=True)
    val_loader = _loader(features, y, val, batch_size, None, shuffle=False) if n_val else None
    task_loss = (_regression_loss if options.task == "regression"
                 else _classification_loss(metadata))
    loss = _with_entropy(task_loss, options.attention_entropy)
    history = train(network, loader, val_loader, loss, epochs=options.epochs, lr=options.lr,
                    weight_decay=options.weight_decay,
                    patience=options.patience if n_val else None, device=options.device,
                    seed=options.seed, desc="abmil")
    metadata.update(model="abmil", history=history, n_train_bags=int(len(train_ids)),
                    n_val_bags=int(n_val))
    network.metadata = metadata
    return network.cpu()


class _BagDataset(torch.utils.data.Dataset):
    def __init__(self, features, targets, ids, max_tiles):
        self.features, self.targets, self.ids, self.max_tiles = features, targets, ids, max_tiles

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(self.features[self.ids[i]])
        if self.max_tiles is not None and len(x) > self.max_tiles:
            x = x[torch.randperm(len(x))[: self.max_tiles]]
        return {"features": x, "target": torch.as_tensor(self.targets[self.ids[i]])}


def _collate(items: list[dict]) -> dict[str, torch.Tensor]:
    n = max(len(item["features"]) for item in items)
    features = torch.zeros(len(items), n, items[0]["features"].shape[1])
    mask = torch.zeros(len(items), n, dtype=torch.bool)
    for i, item in enumerate(items):
        features[i, : len(item["features"])] = item["features"]
        mask[i, : len(item["features"])] = True
    return {"features": features, "mask": mask,
            "target": torch.stack([item["target"] for item in items])}


def _loader(features, targets, ids, batch_size, max_tiles, *, shuffle):
    return torch.utils.data.DataLoader(_BagDataset(features, targets, ids, max_tiles),
                                       batch_size=batch_size, shuffle=shuffle,
                                       collate_fn=_collate)


def _regression_loss(network, batch, outputs) -> torch.Tensor:
    return torch.nn.functional.mse_loss(outputs, batch["target"])


def _classification_loss(metadata: dict):
    slices = _class_slices(metadata)

    def loss(network, batch, logits) -> torch.Tensor:
        return sum(torch.nn.functional.cross_entropy(logits[:, s], batch["target"][:, j])
                   for j, s in enumerate(slices))

    return loss


def attention_flatness(attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - H(a) / log n``, averaged over bags and branches: 0 for even attention, 1 for one tile.

    ``attention`` is ``(bags, tiles, branches)`` (0 on padding), ``mask`` ``(bags, tiles)``; bags
    of a single tile (whose attention cannot be anything but even) count as 0.
    """
    n = mask.sum(dim=1, keepdim=True).to(attention.dtype)  # (bags, 1)
    # a log a with its limit 0 on padding (and a finite gradient there: no log 0)
    terms = attention * torch.log(attention.clamp_min(torch.finfo(attention.dtype).tiny))
    entropy = -terms.masked_fill(~mask.bool().unsqueeze(-1), 0.0).sum(dim=1)  # (bags, branches)
    log_n = torch.log(n)
    flatness = torch.where(n > 1, 1 - entropy / log_n.clamp_min(1e-12), torch.zeros_like(entropy))
    return flatness.mean()


def _with_entropy(task_loss, weight: float):
    """The task loss, plus ``weight`` times the attention's flatness penalty while training.

    Validation (early stopping) scores the task loss alone, so the penalty shapes the attention
    without moving the stopping epoch's yardstick.
    """

    def loss(network, batch) -> torch.Tensor:
        outputs, attention, _ = network(batch["features"], batch["mask"], return_att=True)
        value = task_loss(network, batch, outputs)
        if weight and network.training:
            value = value + weight * attention_flatness(attention, batch["mask"])
        return value

    return loss


def predict(
    model: Network,
    data: Any,
    *,
    tiles_key: str | None = None,
    features_key: str | None = None,
    bags_key: str | None = None,
    key_added: str | None = None,
    overwrite: bool = False,
) -> AnnData:
    """Predict every bag (slide) and every tile with a slide-level model.

    Parameters
    ----------
    model
        A network from ``hx.tl.fit(..., model="abmil")`` (or ``"meanpool_ridge"``).
    data
        A Cohort, a SpatialData with pseudo-bulk bags, or a mapping of them (as for ``fit``).
    tiles_key
        Key of the tiles; defaults to the one the model was trained on.
    features_key
        Key of the tile features; defaults to the one the model was trained on. They must come
        from the same encoder.
    bags_key
        Key of the pseudo-bulk bags; defaults to the one the model was trained on.
    key_added
        Where per-tile results go in each tile table; defaults to the model's name.
    overwrite
        Replace existing per-tile results under ``key_added``, only those an earlier
        ``hx.tl.predict`` recorded as its own (``uns["bag_outputs"][key_added]`` of the tile
        tables); a column or matrix of the user's, or features of ``hx.tl.embed``, is never
        replaced.

    Returns
    -------
    Bags x outputs AnnData: predicted expression in ``X`` (in the units of the targets, e.g.
    log1p-normalised) with the measured values in ``layers["measured"]`` where the data hold them,
    or class probabilities (columns ``"<target>:<class>"``) with the predicted class in
    ``obs["<target>_pred"]``. ``obs`` keeps the bags' own columns (``section``, labels) and
    ``n_tiles``. Each tile table gets ``obsm[key_added]`` (per-tile predicted expression or class
    probabilities), ``obsm[f"{key_added}_attention"]`` (attention of every branch, normalised to
    sum to 1 over the section, so within a bag it ranks tiles as the bag's own attention does),
    ``obs[f"{key_added}_attention"]`` (its mean over branches) and
    ``obsm[f"{key_added}_contribution"]``, the contribution map: a tile's contribution to its
    bag's prediction is its attention within the bag times its own output (expression, or class
    logits for classification), and these sum to the bag's prediction (to its logits). The map
    holds them in units of an even share, multiplied by the bag's number of tiles (with uniform
    attention a tile's value is its own output; a bag's prediction is the *mean* of its tiles'
    values), so tiles of bags of different sizes compare. A tile in several overlapping bags
    gets the mean of its values; where bags do not overlap (the slides of a Cohort, pseudo-bulk
    bags with ``stride_um == size_um``) the identity is exact. With labels
    made by ``labels="median"``, ``obs`` also holds the held-out bags' labels under the
    training thresholds.

    For a cohort on disk (:func:`histoexpr.io.read_cohort`) each slide's per-tile outputs and
    attention go to its store as soon as the slide is scored (so memory does not grow with the
    cohort), and come back with the slide (``cohort[slide_id]``) as ``obsm[key_added]``,
    ``obsm`` / ``obs[f"{key_added}_attention"]``. The stores keep no contribution map: there is
    no ``obsm[f"{key_added}_contribution"]`` for such a cohort. For regression it is the tile's
    output (``obsm[key_added]``) times its attention in the output's branch times the slide's
    number of tiles (up to the float32 rounding of the stored values); for classification it
    needs the class logits, which are not stored: predict on the slides in memory for it.

    """
    meta = model.metadata
    tiles_key = meta["tiles_key"] if tiles_key is None else tiles_key
    features_key = meta["features_key"] if features_key is None else features_key
    bags_key = meta["bags_key"] if bags_key is None else bags_key
    key_added = meta["model"] if key_added is None else key_added
    bags = collect_bags(data, tiles_key=tiles_key, features_key=features_key, bags_key=bags_key)
    if bags.stores is not None:  # the results become a folder in every slide's store
        check_store_name("key_added", key_added, what="set of results in a slide store")
    _check_features(model, bags)
    on_disk = bags.stores is not None
    made = None
    if on_disk:  # every store is checked before the first slide is written
        check_stores_writable(bags, list(bags.sections), key_added, overwrite=overwrite)
        made = model_identity(model)  # recorded with each slide's results
    tile_outputs, tile_attention, contributions = {}, {}, {}
    bag_outputs = np.zeros((bags.bulk.n_obs, len(meta["columns"])))
    sections = bags.bulk.obs["section"].to_numpy()
    for name, sdata in bags.sections.items():
        scores, outputs = _score_section(model, sdata, bags)
        contribution = _contributions(scores, outputs, bags, np.flatnonzero(sections == name),
                                      bag_outputs, meta)
        if on_disk:  # written now: a cohort's per-tile results are never all held at once
            write_store_results(bags, name, _readable(outputs, meta), _softmax(scores),
                                columns=meta["columns"], branches=meta["branches"],
                                key_added=key_added, overwrite=overwrite, model=made)
            continue
        contributions[name] = contribution
        tile_outputs[name] = _readable(outputs, meta)
        tile_attention[name] = _softmax(scores)
    if on_disk:
        finish_store_results(bags, key_added, len(bags.sections), made)
    else:
        write_predictions(bags, tile_outputs, tile_attention, columns=meta["columns"],
                          branches=meta["branches"], key_added=key_added, overwrite=overwrite,
                          model=meta.get("model"))
        write_contributions(bags, contributions, columns=meta["columns"], key_added=key_added)
    values = bag_outputs if meta["task"] == "regression" else _readable(bag_outputs, meta)
    result = bag_table(bags, values, meta["columns"], measured=_measured(bags, meta))
    if meta["task"] == "classification":
        _add_classes(result, meta)
        if "label_rule" in meta and _has_genes(bags, meta["label_rule"]):
            import pandas as pd

            for target, truth in rule_labels(bags, meta["label_rule"],
                                             meta["target_transform"]).items():
                result.obs[target] = pd.Categorical(truth, categories=["down", "up"])
    result.uns[key_added] = {"model": meta["model"], "features_key": features_key,
                             "tiles_key": tiles_key, "bags_key": bags_key,
                             "task": meta["task"]}
    return result


def _contributions(scores: np.ndarray, outputs: np.ndarray, bags, indices: np.ndarray,
                   bag_outputs: np.ndarray, meta: dict) -> np.ndarray:
    """The contribution map of one section; its bags' outputs go into ``bag_outputs``.

    ``indices``: the section's bags (rows of ``bags.bulk``). A tile's contribution to a bag is
    its attention within the bag times its own output (expression units for regression, class
    logits for classification), so that a bag's contributions sum to its output; the map holds
    them in units of an even share (times the bag's number of tiles), averaged over the bags of
    a tile (NaN for a tile of no bag).
    """
    units = _readable(outputs, meta) if meta["task"] == "regression" else outputs
    shares, n_bags = np.zeros_like(units), np.zeros(len(units))
    for i in indices:
        rows = bags.rows[i]
        share = _weights(scores[rows], units.shape[1]) * units[rows]  # sums to the bag
        bag_outputs[i] = share.sum(axis=0)
        shares[rows] += share * len(rows)  # in units of an even share
        n_bags[rows] += 1
    with np.errstate(invalid="ignore"):
        return shares / n_bags[:, None]  # NaN for tiles of no bag
