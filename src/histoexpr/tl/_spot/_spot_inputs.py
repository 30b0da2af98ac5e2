"""The spot regressor's inputs: constants, training sections, checks of tiles and encoders."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..._core.elements import foreign_tile_entries
from ..._core.image import image_levels
from ..._core.logs import logger, shown
from ..._core.ownership import require_element
from ..._core.records import (
    RELATIVE_TOLERANCE,
    TileRecord,
    made_within,
    within_of,
)

#: how the elements predict writes record their writer (see ``_core.ownership.store_element``),
#: with the kind of model (``MODEL``) and the call's ``key_added``: only a spot regressor's predict
#: under the same key_added replaces them
STEP = "hx.tl.predict"
#: the kind of model, as its ``metadata["model"]`` names it
MODEL = "spot_regressor"

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))
#: relative pixel-size difference below which two pixel sizes count as the same
_MPP_TOLERANCE = RELATIVE_TOLERANCE
#: normalisation of patches fed to the CNN route (tiles are in [0, 1])
CNN_NORMALISATION = {"mean": 0.5, "std": 0.25}
#: the writer records of the tiles and features the spot regressor makes for itself say
#: ``within=WITHIN`` (``_core.records.made_within``); only those it remakes
WITHIN = "spot_regressor"


@dataclass
class _Section:
    """What one training section contributes: its features or patches and their targets."""

    name: str
    sdata: Any
    tile_rows: np.ndarray  # rows of the spot-tile table that have a spot with counts
    targets: np.ndarray  # (n, genes) log1p-normalised expression
    centres: np.ndarray  # (n, 2) um
    library: np.ndarray  # (n,) each spot's counts over all genes (its library size)


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


def is_network_fingerprint(fingerprint: Any) -> bool:
    """Whether an encoder fingerprint is a network object's (``"<class>:weights:<digest>"``).

    Features of a network given to :func:`histoexpr.tl.embed` as an object: no name or file
    makes them again, so the spot regressor takes them as the user's own.
    """
    return isinstance(fingerprint, str) and ":weights:" in fingerprint


def own_network_features(found, differences: list[str], *, encoder: Any, features_key: str,
                         table_key: str) -> bool:
    """Whether a fit takes the features under ``features_key`` as the user's own, as they are.

    ``found`` (an :class:`~histoexpr._core.records.EmbeddingRecord` made outside the spot
    regressor) differs from the features asked for in ``differences``. They are taken when
    :func:`histoexpr.tl.embed` made them with a network object (no name or file makes them
    again) on these tiles (they differ in nothing but the encoder) and ``encoder`` is left at
    ``"handcrafted"``; another ``encoder`` asked for other features, and is refused here.
    """
    if not is_network_fingerprint(found.fingerprint) or any(
            not d.startswith(("encoder:", "fingerprint:")) for d in differences):
        return False
    if encoder == "handcrafted":
        logger.info("Training on obsm[%r] of %r as they are: features of your own network "
                    "%r (fingerprint %r); prediction needs features of the same network under "
                    "that key.", features_key, table_key, found.encoder, found.fingerprint)
        return True
    raise ValueError(
        f"obsm[{features_key!r}] of sdata.tables[{table_key!r}] holds features that "
        f"hx.tl.embed made with a network object of yours ({found.encoder!r}, fingerprint "
        f"{found.fingerprint!r}), not with encoder={encoder!r}, so they are not used. To train "
        "on them as they are, leave encoder at its default ('handcrafted'); to train on "
        f"features of {encoder!r}, pass another features_key.")


def missing_features_message(expected: Mapping[str, Any], features_key: str,
                             table_key: str) -> str:
    """What predict says when a model trained on the user's own features finds none."""
    if not is_network_fingerprint(expected.get("fingerprint")):
        return (f"The model was trained on features of your own under obsm[{features_key!r}], "
                f"which sdata.tables[{table_key!r}] lacks; put the same kind of features there "
                "(one row per tile, made the same way), then predict.")
    tiles_key = table_key.removesuffix("_table")
    return (f"The model was trained on features of your own network {expected.get('encoder')!r} "
            f"(fingerprint {expected['fingerprint']!r}) under obsm[{features_key!r}], which "
            f"sdata.tables[{table_key!r}] lacks: histoexpr cannot make them itself. Embed the "
            f"tiles with the same network, hx.tl.embed(sdata, {tiles_key!r}, encoder=net, "
            f"key_added={features_key!r}) (tiles of {expected.get('size_px')} px at "
            f"{expected.get('mpp')} um/px), then predict with tiles_key={tiles_key!r}.")


def _require_spot_inputs(sdata, name: str, image_key: str, spots_key: str, table_key: str):
    options = {"images": "image_key", "shapes": "spots_key", "tables": "table_key"}
    for key, kind in ((image_key, "images"), (spots_key, "shapes"), (table_key, "tables")):
        if key not in getattr(sdata, kind):
            raise KeyError(f"Section {name!r} has no sdata.{kind}[{key!r}] (it has "
                           f"{sorted(getattr(sdata, kind))}): a spot regressor learns from an "
                           f"image, its spots and their counts. Pass {options[kind]}= to name "
                           "the one to use.")
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


def check_section_tiles(name: str, sdata, *, image_key: str, spots_key: str, tiles_key: str,
                        size_um: float, mpp: float) -> bool:
    """Whether the section's tiles ``tiles_key`` are to be (re)made for a fit; refuse otherwise.

    ``False``: they exist and are alike, and are reused. ``True``: there are none, or they were
    made otherwise by an earlier fit (within the spot regressor) and their table holds nothing
    but what that fit wrote. Tiles made otherwise by anyone else, or whose table holds entries
    of the user's or of another step (an annotation, features of ``hx.tl.embed``), are refused
    with a ``ValueError`` naming them, before anything is written. Check every section with this
    before any is tiled, so that a refused fit leaves every section as it was.
    """
    if tiles_key not in sdata.shapes:
        return True
    differences = tile_differences(sdata, tiles_key, image_key=image_key, size_um=size_um,
                                   mpp=mpp, centres=spots_key)
    if not differences:
        return False
    table = sdata.tables.get(f"{tiles_key}_table")
    other_key = f"tiles_key='{tiles_key}_{size_um:g}um_{mpp:g}mpp'"
    if table is None or within_of(table.uns) != WITHIN:
        raise ValueError(
            f"The tiles sdata.shapes[{tiles_key!r}] of section {name!r} were not made for "
            f"this fit ({'; '.join(differences)}), and histoexpr reuses only tiles made "
            f"alike and remakes only its own. Pass another tiles_key (e.g. "
            f"{other_key}) to make matching tiles.")
    foreign = foreign_tile_entries(sdata, tiles_key, own_within=WITHIN)
    if foreign:
        listed = shown(foreign)
        raise ValueError(
            f"The tiles {tiles_key!r} of section {name!r} were made by an earlier fit otherwise "
            f"({'; '.join(differences)}), but their table {tiles_key + '_table'!r} now holds "
            f"entries that fit did not write: {listed}. Remaking the tiles would delete them, so "
            f"they are kept: pass another tiles_key (e.g. {other_key}), or move those entries "
            "to a table of your own first.")
    return True


def _prepare_section(name: str, sdata, genes: list[str], *, image_key: str, spots_key: str,
                     table_key: str, tiles_key: str, size_um: float, mpp: float) -> _Section:
    """Spot tiles of one section, joined with the log1p-normalised expression of their spot."""
    from ..._core.expression import expression_targets, library_sizes
    from ...pp import tile

    remake = check_section_tiles(name, sdata, image_key=image_key, spots_key=spots_key,
                                 tiles_key=tiles_key, size_um=size_um, mpp=mpp)
    overwrite = remake and tiles_key in sdata.shapes
    if overwrite:
        differences = tile_differences(sdata, tiles_key, image_key=image_key, size_um=size_um,
                                       mpp=mpp, centres=spots_key)
        logger.info("Section %r: remaking the tiles %r that an earlier fit made otherwise "
                    "(%s).", name, tiles_key, "; ".join(differences))
    if remake:
        with made_within(WITHIN):
            tile(sdata, image_key, size_um=size_um, mpp=mpp, centres=spots_key, min_tissue=0,
                 key_added=tiles_key, overwrite=overwrite)
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
                    np.asarray(tile_table.obsm["spatial"])[keep],
                    library[spot_rows[keep]])


def tile_differences(sdata, tiles_key: str, *, image_key: str, size_um: float, mpp: float,
                     centres: str | None = None) -> list[str]:
    """How the tiles under ``tiles_key`` differ from the ones asked for, each naming its field.

    ``[]``: alike (their :class:`~histoexpr._core.records.TileRecord` differs in nothing).
    """
    table = sdata.tables.get(f"{tiles_key}_table")
    if table is None or "tiles" not in table.uns:
        return [f"no table {tiles_key + '_table'!r} records how they were made"]
    wanted = TileRecord(image_key=image_key, size_um=size_um, mpp=mpp, centres=centres)
    out = TileRecord.from_uns(table.uns["tiles"]).differences(wanted)
    if centres is not None and "spot_id" not in table.obs:
        out.append(f"centres: on a grid, not centred on {centres!r}")
    return out


def _refuse_random_encoder(encoder: Any) -> None:
    """Head routes need an encoder with fixed weights: prediction must make the same features."""
    from ...models import TileEncoder

    for one in encoder if isinstance(encoder, list | tuple) else [encoder]:
        if isinstance(one, str) and (one in TileEncoder.ARCHITECTURES or one.startswith("timm:")):
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


def _inside_image(sdata, image_key: str, centres: np.ndarray) -> np.ndarray:
    level = image_levels(sdata, image_key)[0]
    x_min, y_min, x_max, y_max = level.bounds
    x, y = centres[:, 0], centres[:, 1]
    return (x >= x_min) & (y >= y_min) & (x < x_max) & (y < y_max)


def _check_image_mpp(sdata, image_key: str, mpp: float) -> None:
    image_mpp = image_levels(sdata, image_key)[0].mpp
    if image_mpp > mpp * (1 + _MPP_TOLERANCE):
        logger.warning("The model was trained on patches at %.4g um/px but %r has only %.4g "
                       "um/px: patches are upsampled, predictions may degrade.", mpp, image_key,
                       image_mpp)
    elif abs(image_mpp - mpp) > _MPP_TOLERANCE * mpp:
        logger.info("The model was trained at %.4g um/px; %r (%.4g um/px) is read at the "
                    "model's pixel size.", mpp, image_key, image_mpp)


def _tiles_at(sdata, tiles_key: str, *, size_um: float, mpp: float,
              image_key: str | None = None):
    """Return the section, or a light copy whose tiles are read at the model's pixel size."""
    from spatialdata import SpatialData

    table_key = f"{tiles_key}_table"
    require_element(sdata, table_key, "tables")
    stored = sdata.tables[table_key].uns.get("tiles")
    if stored is None:
        raise ValueError(f"sdata.tables[{table_key!r}] does not record how the tiles were made "
                         "(no uns['tiles']); make tiles with hx.pp.tile or pass another "
                         "tiles_key.")
    record = TileRecord.from_uns(stored)
    if image_key is not None and record.differences(TileRecord(image_key=image_key)):
        logger.info("The tiles %r were cut from %r; reading them from %r.", tiles_key,
                    record.image_key, image_key)
    wider = record.differences(TileRecord(size_um=size_um))
    if wider:
        raise ValueError(
            f"The tiles {tiles_key!r} differ from the model's ({wider[0]}): the model was "
            f"trained on {size_um:g} um patches; make tiles of that width (hx.pp.tile(..., "
            f"size_um={size_um:g})) or leave tiles_key to a new key."
        )
    if not record.differences(TileRecord(mpp=mpp)):
        return sdata
    logger.info("The tiles %r are at %.4g um/px; reading them at the model's %.4g um/px.",
                tiles_key, record.mpp, mpp)
    table = sdata.tables[table_key].copy()
    table.uns["tiles"] = record.read_at(mpp, size_um=size_um).to_uns()
    for key in [k for k in table.obsm if k != "spatial"]:
        del table.obsm[key]  # features computed at another pixel size
    return SpatialData(images=dict(sdata.images), shapes={tiles_key: sdata.shapes[tiles_key]},
                       tables={table_key: table})
