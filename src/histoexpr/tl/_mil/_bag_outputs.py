"""What the bag models check and write when they predict: section scores, contributions, classes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..._core import distributed as _distributed
from ..._core.logs import log_added, logger
from ..._core.records import EmbeddingRecord
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
    """Per-tile contributions into ``obsm[f"{key_added}_contribution"]`` of each tile table."""
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
                      branches: list[str], key_added: str, overwrite: bool) -> None:
    """Per-tile outputs and section-normalised attention into each section's tile table."""
    import pandas as pd

    if bags.stores is not None:
        check_store_name("key_added", key_added, what="set of results in a slide store")
        # under torchrun every process predicts the same values: rank 0 alone writes the stores,
        # after every process has checked them and before any reads them again
        _distributed.context()
        if not overwrite:
            taken = [name for name in tile_outputs
                     if key_added in bags.stores[name].results_keys(bags.tiles_key)]
            if taken:
                raise KeyError(f"The stores of {taken[:3]} already hold results {key_added!r}; "
                               "pass overwrite=True or choose another key_added.")
        _distributed.barrier()
        if _distributed.is_main_process():
            for name, outputs in tile_outputs.items():
                bags.stores[name].write_results(bags.tiles_key, key_added, outputs,
                                                tile_attention[name], columns=columns,
                                                branches=branches, overwrite=overwrite)
        _distributed.barrier()
        bags.sections.forget()
        logger.info("Adding per-tile outputs and attention %r to the stores of %d slides",
                    key_added, len(tile_outputs))
        return
    for name, outputs in tile_outputs.items():
        table = bags.sections[name].tables[f"{bags.tiles_key}_table"]
        keys = (key_added, f"{key_added}_attention")
        if not overwrite and any(k in table.obsm for k in keys):
            raise KeyError(f"The tile table of {name!r} already holds obsm[{key_added!r}]; pass "
                           "overwrite=True or choose another key_added.")
        attention = tile_attention[name]
        table.obsm[key_added] = pd.DataFrame(outputs, index=table.obs_names, columns=columns)
        table.obsm[f"{key_added}_attention"] = pd.DataFrame(attention, index=table.obs_names,
                                                            columns=branches)
        table.obs[f"{key_added}_attention"] = attention.mean(axis=1)
        log_added("tables", f"{bags.tiles_key}_table", f"{name}: obsm[{key_added!r}] per-tile "
                  f"outputs, obsm/obs[{key_added + '_attention'!r}] attention")


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
