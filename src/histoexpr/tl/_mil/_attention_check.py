"""Do attention and per-tile predictions point at the right places? Checked against the spots."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._core.ownership import require_element
from ..._core.validate import renamed_parameters
from .._sections import as_sections

if TYPE_CHECKING:
    import pandas as pd
    from spatialdata import SpatialData


@renamed_parameters(sections="data", key="pred_key")
def attention_check(
    data: SpatialData | Mapping[str, SpatialData],
    *,
    pred_key: str = "abmil",
    tiles_key: str = "he_tiles",
    table_key: str = "table",
    genes: Any = None,
) -> pd.DataFrame:
    """Rank-correlate per-tile predictions and attention with the expression under the tiles.

    On spot-resolved sections the expression under each spot-centred tile is measured, so a
    slide-level model's per-tile outputs (written by :func:`histoexpr.tl.predict`) can be checked
    tile by tile: the Spearman correlation over a section's tiles between the predicted and the
    measured log1p-normalised expression of each gene, and between the tiles' attention (the
    gene's own branch, or the shared one) and that measured expression, and between the tiles'
    contributions (attention times output, where :func:`histoexpr.tl.predict` wrote them) and
    that expression. Use it on held-out sections; :func:`histoexpr.tl.cross_validate` runs it by
    default wherever the held-out sections have spot-centred tiles and their spots.

    Parameters
    ----------
    data
        A section or a mapping of sections by name, with spot-centred tiles carrying per-tile
        results under ``pred_key`` and the spot table. (Was ``sections``, still accepted with a
        ``FutureWarning``.)
    pred_key
        The ``key_added`` of the prediction (``obsm[pred_key]`` and
        ``obsm[f"{pred_key}_attention"]``). (Was ``key``, still accepted with a
        ``FutureWarning``.)
    tiles_key
        Key of the spot-centred tiles.
    table_key
        Key of the spot table (raw counts).
    genes
        Genes to check; defaults to every predicted gene.

    Returns
    -------
    One row per section and gene: ``section``, ``gene``, ``tile_spearman`` (predicted vs
    measured), ``attention_spearman`` (attention vs measured), ``contribution_spearman``
    (contribution vs measured; NaN where none was written), ``n_tiles``.

    """
    import pandas as pd

    from ..._core.expression import expression_targets
    from ..._core.panels import resolve_genes
    from .._metrics._expression_metrics import column_spearman

    key = pred_key
    sections = as_sections(data)
    rows = []
    for name, sdata in sections.items():
        require_element(sdata, table_key, "tables")
        tiles = sdata.tables[f"{tiles_key}_table"]
        if key not in tiles.obsm or f"{key}_attention" not in tiles.obsm:
            raise KeyError(f"The tiles of {name!r} hold no per-tile results {key!r}; run "
                           f"hx.tl.predict(model, ..., key_added={key!r}) first.")
        if "spot_id" not in tiles.obs.columns:
            raise ValueError(f"The tiles of {name!r} are not centred on spots; the check needs "
                             "hx.pp.tile(sdata, centres='spots').")
        predicted, attention = tiles.obsm[key], tiles.obsm[f"{key}_attention"]
        names = resolve_genes(genes, list(predicted.columns), what="the per-tile predictions")
        spots = sdata.tables[table_key]
        instance_key = spots.uns.get("spatialdata_attrs", {}).get("instance_key", "spot_id")
        row_of = {s: i for i, s in enumerate(spots.obs[instance_key].to_numpy())}
        spot_rows = np.array([row_of[s] for s in tiles.obs["spot_id"].to_numpy()])
        measured = expression_targets(spots[spot_rows], names)
        branch = [g if g in attention.columns else attention.columns[0] for g in names]
        tile_rho = column_spearman(predicted[names].to_numpy(), measured)
        attention_rho = column_spearman(attention[branch].to_numpy(), measured)
        contribution_rho = np.full(len(names), np.nan)
        if f"{key}_contribution" in tiles.obsm:
            values = tiles.obsm[f"{key}_contribution"][names].to_numpy()
            inside = np.isfinite(values).all(axis=1)  # tiles of at least one bag
            contribution_rho = column_spearman(values[inside], measured[inside])
        rows.append(pd.DataFrame({"section": name, "gene": names, "tile_spearman": tile_rho,
                                  "attention_spearman": attention_rho,
                                  "contribution_spearman": contribution_rho,
                                  "n_tiles": tiles.n_obs}))
    return pd.concat(rows, ignore_index=True)


def has_spot_truth(sdata: SpatialData, *, tiles_key: str, table_key: str = "table") -> bool:
    """Whether a section's tiles sit on spots whose expression is measured (the check's truth)."""
    table = sdata.tables.get(f"{tiles_key}_table")
    return (table is not None and table_key in sdata.tables
            and "spot_id" in table.obs.columns)
