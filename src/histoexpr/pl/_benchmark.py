"""The result of ``hx.tl.benchmark``: per-section Pearson with its spread, pooled beside it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._docs import check_save, save_figure, shared_docs

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@shared_docs
def benchmark(
    result: Any,
    *,
    libreg: bool = False,
    title: str | None = None,
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Axes:
    """Draw each encoder x head of a benchmark: mean per-section Pearson, its spread, pooled.

    One row per encoder and head (the peer's bar grey): the bar is the mean over the held-out
    sections of the per-section mean Pearson, the dots are the sections themselves (their
    range is the spread), and the diamond beside it is the pooled Pearson (all held-out spots
    together, see :func:`histoexpr.tl.benchmark`).

    Parameters
    ----------
    result
        The :class:`~histoexpr.tl.BenchmarkResult` of :func:`histoexpr.tl.benchmark`.
    libreg
        Draw the scores after regressing out the log library size (``*_libreg``).

    Returns
    -------
    The axes drawn into.

    Examples
    --------
    A benchmark's result (here written by hand; usually ``hx.tl.benchmark(sections, ...)``):

    .. plot::

        >>> import pandas as pd
        >>> import histoexpr as hx
        >>> table = pd.DataFrame({"encoder": ["handcrafted", "squidpy"],
        ...                       "head": ["ridge", "peer: PCA (30) + ridge"],
        ...                       "peer": [False, True], "pearson_per_section": [0.33, 0.25],
        ...                       "pearson_pooled": [0.41, 0.30]})
        >>> sections = pd.DataFrame({"encoder": ["handcrafted"] * 3 + ["squidpy"] * 3,
        ...                          "head": ["ridge"] * 3 + ["peer: PCA (30) + ridge"] * 3,
        ...                          "section": ["C2", "C3", "C4"] * 2,
        ...                          "pearson": [0.28, 0.35, 0.36, 0.08, 0.33, 0.34]})
        >>> result = hx.tl.BenchmarkResult(table=table, sections=sections,
        ...                                genes=pd.DataFrame(), timing=pd.DataFrame())
        >>> ax = hx.pl.benchmark(result)

    """
    check_save(save)
    import matplotlib.pyplot as plt

    table, sections = getattr(result, "table", None), getattr(result, "sections", None)
    if table is None or sections is None:
        raise TypeError(f"result must be the BenchmarkResult of hx.tl.benchmark (with .table and "
                        f".sections), got a {type(result).__name__}.")
    suffix = "_libreg" if libreg else ""
    for frame, column in ((table, f"pearson{suffix}_per_section"),
                          (table, f"pearson{suffix}_pooled"), (sections, f"pearson{suffix}")):
        if column not in frame.columns:
            raise KeyError(f"The result has no column {column!r}; is it hx.tl.benchmark's?")
    labels = [f"{e} / {h}" for e, h in zip(table["encoder"], table["head"], strict=True)]
    y = np.arange(len(table))[::-1]
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 0.45 * len(table) + 1.2))
    peer = table["peer"].to_numpy(dtype=bool) if "peer" in table else np.zeros(len(table), bool)
    ax.barh(y + 0.18, table[f"pearson{suffix}_per_section"], height=0.34,
            color=np.where(peer, "#9a9a9a", "#4c72b0"), label="per section: mean")
    for row, position in zip(table.itertuples(index=False), y, strict=True):
        one = sections[(sections["encoder"] == row.encoder) & (sections["head"] == row.head)]
        values = one[f"pearson{suffix}"].to_numpy()
        ax.plot([values.min(), values.max()], [position + 0.18] * 2, color="black", lw=1)
        ax.scatter(values, np.full(len(values), position + 0.18), s=12, color="black", zorder=3)
    ax.scatter(table[f"pearson{suffix}_pooled"], y - 0.18, marker="D", s=28, color="#dd8452",
               zorder=3, label="pooled over all held-out spots")
    ax.scatter([], [], s=12, color="black", label="each held-out section")
    ax.set_yticks(y, labels, fontsize=8)
    ax.axvline(0, color="black", lw=0.5)
    ax.set_xlabel(f"mean Pearson over genes{' (library size regressed out)' if libreg else ''}")
    ax.legend(frameon=False, fontsize="small", loc="lower right")
    ax.set_title(title if title is not None else "held-out sections (leave one group out)")
    save_figure(ax.figure, save)
    return ax
