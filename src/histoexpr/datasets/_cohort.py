"""A synthetic cohort: many small sections with bulk expression and slide-level labels."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .._core.logs import logger, progress
from .._core.seeds import resolve_seed
from .._core.validate import check_fraction, check_int
from . import _rule
from ._synthetic import _build_section, _check_size

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ..io import Cohort


def synthetic_cohort(
    n_slides: int = 20,
    *,
    seed: int | None = None,
    size_um: float | tuple[float, float] = 400.0,
    mpp: float = 0.5,
    max_tumour: float = 0.6,
    tumour_threshold: float = 0.25,
    mixing: float = 0.15,
    transcripts: bool = False,
    spots: bool = False,
) -> Cohort:
    """A cohort of small synthetic sections with bulk expression and a diagnosis per slide.

    Each slide is a :func:`~histoexpr.datasets.synthetic_section` with its own region
    proportions, so slides differ in how much tumour they hold; the slide's bulk expression is
    the sum of its cells' counts and its diagnosis follows its tumour-cell fraction.

    Parameters
    ----------
    n_slides
        Number of slides.
    seed
        Random seed; ``None`` uses ``histoexpr.settings.seed``. Slide ``i`` is built from a seed
        derived from ``(seed, i)``, so the first slides do not change when ``n_slides`` grows.
    size_um
        Side of each (square) slide in micrometres, or its ``(width, height)``.
    mpp
        Pixel size of the images in um/px.
    max_tumour
        Largest share of tissue area given to tumour regions (the share is uniform on
        ``[0, max_tumour]``).
    tumour_threshold
        Tumour-cell fraction from which a slide is diagnosed ``"tumour"``.
    mixing
        Share of the cells of a region that are not of the region's dominant type.
    transcripts
        Whether each slide gets its transcripts (slower; off by default).
    spots
        Whether each slide gets Visium-like spots (needs ``transcripts=True``).

    Returns
    -------
    A :class:`histoexpr.io.Cohort` whose slides are named ``"slide_00"``, ``"slide_01"``, ... and
    whose ``bulk`` (slides x genes, ``X`` and ``layers["counts"]`` the summed counts, float32)
    has ``obs`` columns ``diagnosis`` (``"normal"`` / ``"tumour"``), ``n_cells`` and
    ``fraction_<type>`` (the share of the slide's cells of each type), and
    ``uns["synthetic"]`` the rule below.

    Notes
    -----
    Slide ``i`` gives tumour regions a share ``t_i ~ Uniform(0, max_tumour)`` of its tissue and
    splits the rest between stroma, lymphocyte and epithelium regions by ``Dirichlet(2, 2, 2)``.
    Its cells and counts follow the rule of :func:`~histoexpr.datasets.synthetic_section`
    (stored in every slide's ``attrs["synthetic"]``). Then, exactly:

    - ``bulk.X[i] = sum of the slide's cells_table counts``;
    - ``diagnosis = "tumour" if fraction_tumour >= tumour_threshold else "normal"``.

    Examples
    --------
    >>> import histoexpr as hx
    >>> cohort = hx.datasets.synthetic_cohort(4, seed=0)
    >>> cohort.bulk.obs["diagnosis"].tolist()  # doctest: +SKIP

    """
    import time

    from ..io import Cohort

    start = time.perf_counter()
    width_um, height_um = _check_cohort(n_slides, size_um, mpp, max_tumour, tumour_threshold,
                                        mixing)
    if spots and not transcripts:
        raise ValueError("spots=True needs transcripts=True; pass both, or spots=False.")

    value = resolve_seed(seed)
    slides, bulk = _draw_cohort(n_slides, value, width_um=width_um, height_um=height_um, mpp=mpp,
                                max_tumour=max_tumour, tumour_threshold=tumour_threshold,
                                mixing=mixing, transcripts=transcripts, spots=spots)
    obs = bulk.obs
    cohort = Cohort(slides, bulk)
    n_tumour = int((obs["diagnosis"] == "tumour").sum())
    logger.info("Built a synthetic cohort of %d slides (%d tumour, %d normal) in %.1f s",
                n_slides, n_tumour, n_slides - n_tumour, time.perf_counter() - start)
    return cohort


def _check_cohort(n_slides, size_um, mpp, max_tumour, tumour_threshold,
                  mixing) -> tuple[float, float]:
    """The arguments shared by the synthetic cohorts, checked; the slides' width and height."""
    check_int("n_slides", n_slides, minimum=1)
    width_um, height_um = _check_size(size_um, mpp, what="Slides")
    check_fraction("max_tumour", max_tumour, closed="left")
    check_fraction("tumour_threshold", tumour_threshold, closed="right")
    check_fraction("mixing", mixing, closed="both")
    return width_um, height_um


def slide_ids(n_slides: int) -> list[str]:
    """The ids of a synthetic cohort's slides, ``slide_00``, ``slide_01``... (sortable)."""
    width = max(2, len(str(n_slides - 1)))
    return [f"slide_{i:0{width}d}" for i in range(n_slides)]


def _draw_cohort(n_slides: int, value: int, *, width_um: float, height_um: float, mpp: float,
                 max_tumour: float, tumour_threshold: float, mixing: float, transcripts: bool,
                 spots: bool, sink: Callable[[str, SpatialData], None] | None = None):
    """The slides (kept, or handed one by one to ``sink``) and the bulk table of a cohort."""
    import anndata as ad
    import pandas as pd

    ids = slide_ids(n_slides)
    slides, rows, fractions = {}, [], []
    for i, slide_id in enumerate(progress(ids, desc="synthetic slides")):
        rng = np.random.default_rng([value, i])
        tumour = rng.uniform(0, max_tumour)
        rest = rng.dirichlet([2.0, 2.0, 2.0]) * (1 - tumour)
        proportions = dict(zip(_rule.CELL_TYPES, [tumour, *rest], strict=True))
        slide_seed = int(rng.integers(2**31))
        sdata = _build_section(
            np.random.default_rng(slide_seed), width_um=width_um, height_um=height_um,
            mpp=float(mpp), proportions=proportions, mixing=float(mixing), region_scale_um=80.0,
            transcripts=transcripts, spots=spots, spot_diameter_um=55.0, spot_pitch_um=100.0,
            multiscale=None, seed=slide_seed,
        )
        cells = sdata.tables["cells_table"]
        rows.append(np.asarray(cells.layers["counts"].sum(axis=0)).ravel())
        share = cells.obs["cell_type"].value_counts(normalize=True)
        fractions.append([float(share.get(t, 0.0)) for t in _rule.CELL_TYPES] + [cells.n_obs])
        if sink is None:
            slides[slide_id] = sdata
        else:
            sink(slide_id, sdata)

    obs = pd.DataFrame(
        fractions, index=pd.Index(ids),
        columns=[f"fraction_{t}" for t in _rule.CELL_TYPES] + ["n_cells"],
    )
    obs["n_cells"] = obs["n_cells"].astype(np.int64)
    obs.insert(0, "diagnosis", pd.Categorical(
        np.where(obs["fraction_tumour"] >= tumour_threshold, "tumour", "normal"),
        categories=["normal", "tumour"]))
    counts = np.vstack(rows).astype(np.float32)
    bulk = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=pd.Index(list(_rule.GENES))))
    bulk.layers["counts"] = counts.copy()
    bulk.uns["synthetic"] = {
        "seed": value,
        "max_tumour": float(max_tumour),
        "tumour_threshold": float(tumour_threshold),
        "diagnosis_rule": "tumour if fraction_tumour >= tumour_threshold else normal",
        "bulk_rule": "sum over the slide's cells of cells_table.layers['counts']",
    }
    return slides, bulk
