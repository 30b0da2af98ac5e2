"""Features of spot tiles for the spot regressor's ridge and MLP routes (with neighbour context)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._core.image_facts import pixels_changed
from ..._core.logs import logger
from ..._core.records import EmbeddingRecord, TileRecord, made_within
from .._features._embed import encoder_fingerprint
from ._spot_inputs import WITHIN, _encoder_name, missing_features_message, own_network_features

if TYPE_CHECKING:

    from spatialdata import SpatialData


def section_features(sdata: SpatialData, tiles_key: str, *, encoder: str | Sequence[str],
                     features_key: str, context_um: float | Sequence[float] | None = None,
                     standardise: bool = False, image_key: str | None = None,
                     expected: dict[str, Any] | None = None, batch_size: int = 64,
                     device: str | None = None,
                     transform: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Features of every tile of a section, with context and scaling, and how they were made.

    Features under ``features_key`` are reused only when their record matches the encoder and
    the tiles (or ``expected``, the record of a model's training features); features this
    regressor made otherwise are remade, any others refused, but those :func:`histoexpr.tl.embed`
    made with a network object of the user's (see :func:`own_network_features`), which are the
    user's own as features without a record are. Tiles wholly off the image have NaN
    features and take no part in context means or scaling.
    """
    from .._features._embed import embed

    table_key = f"{tiles_key}_table"
    table = sdata.tables[table_key]
    tiles = TileRecord.from_uns(table.uns["tiles"])
    image_key = tiles.image_key if image_key is None else image_key
    own = expected is not None and expected.get("source") == "user"
    wanted = EmbeddingRecord(
        encoder=_encoder_name(encoder), image_key=image_key, mpp=tiles.mpp,
        size_px=tiles.size_px,
        transform=None if transform is None else getattr(transform, "spec",
                                                         type(transform).__name__),
        fingerprint=(expected.get("fingerprint") if expected is not None
                     and (not own or "fingerprint" in expected) else encoder_fingerprint(encoder)))
    user = None  # the record of the user's own features (of a network of theirs), if so
    compute = features_key not in table.obsm
    if not compute:
        record = table.uns.get("embeddings", {}).get(features_key)
        if record is None:
            if expected is not None and not own:
                raise ValueError(
                    f"obsm[{features_key!r}] of sdata.tables[{table_key!r}] has no record of how "
                    f"it was made, but the model was trained on features of {wanted.encoder!r}"
                    f"; histoexpr reuses only features it can check. Pass another tiles_key (the "
                    "features are then computed) or delete those features.")
        else:
            found = EmbeddingRecord.from_uns(record)
            differences = found.differences(wanted)
            # features made from other pixels under the same image key (an image replaced or
            # edited since) are not reused
            if pixels_changed(sdata, record):
                differences = [*differences, f"the pixels of the image {image_key!r} changed"]
            if (differences and found.within != WITHIN and expected is None
                    and own_network_features(found, differences, encoder=encoder,
                                             features_key=features_key, table_key=table_key)):
                differences, user = [], found
            if differences and found.within != WITHIN:
                by = (f" They were made by encoder {found.encoder!r}: to use them, pass the "
                      "encoder they were made with as encoder=." if expected is None and any(
                          d.startswith(("encoder:", "fingerprint:")) for d in differences)
                      else "")
                raise ValueError(
                    f"obsm[{features_key!r}] of sdata.tables[{table_key!r}] was made otherwise "
                    f"({'; '.join(differences)}), so it is not reused. Pass another features_key "
                    f"(or another tiles_key) to compute matching features.{by}")
            if differences:
                logger.info("Remaking obsm[%r] of %r, made by an earlier spot regressor "
                            "otherwise (%s).", features_key, table_key, "; ".join(differences))
                compute = True
    elif own:
        raise ValueError(missing_features_message(expected, features_key, table_key))
    if compute:
        with made_within(WITHIN):
            embed(sdata, tiles_key, encoder=encoder, image_key=image_key, key_added=features_key,
                  batch_size=batch_size, device=device, overwrite=True, transform=transform)
    stored = table.uns.get("embeddings", {}).get(features_key)
    features = np.asarray(table.obsm[features_key], dtype=np.float32)
    if stored is None:
        made = {"source": "user", "n_features": int(features.shape[1])}
    elif user is not None:  # of a network of the user's: its record, kept for predict
        record = EmbeddingRecord.from_uns(stored)
        made = {"source": "user", "encoder": str(record.encoder),
                "fingerprint": str(record.fingerprint), "image_key": str(record.image_key),
                "mpp": float(record.mpp), "size_px": int(record.size_px),
                "n_features": int(features.shape[1])}
    else:
        record = EmbeddingRecord.from_uns(stored)
        made = {"encoder": str(record.encoder),
                "fingerprint": str(record.fingerprint if record.fingerprint is not None
                                   else wanted.fingerprint),
                "image_key": str(record.image_key), "mpp": float(record.mpp),
                "size_px": int(record.size_px), "n_features": int(features.shape[1])}
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
