"""A synthetic tissue section: H&E and DAPI images, nuclei, cell types, transcripts and spots.

The section is drawn from a fixed generative rule (``_rule.py``) so that every later step
(tiling, learning, prediction) can be checked against a known truth.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from .._core.logs import logger
from .._core.seeds import resolve_seed
from .._core.validate import check_bool, check_fraction, check_positive
from . import _rule
from ._synthetic_elements import (
    _cell_table,
    _image,
    _labels,
    _points,
    _scale_factors,
    _spots,
    _transcripts,
)
from ._synthetic_tissue import (
    _draw_nuclei,
    _expression,
    _layout,
    _local_density,
    _place_cells,
    _render,
)

if TYPE_CHECKING:
    from spatialdata import SpatialData


def synthetic_section(
    *,
    seed: int | None = None,
    size_um: float | tuple[float, float] = 1000.0,
    mpp: float = 0.5,
    proportions: Mapping[str, float] | None = None,
    mixing: float = 0.15,
    region_scale_um: float = 80.0,
    transcripts: bool = True,
    spots: bool = True,
    spot_diameter_um: float = 55.0,
    spot_pitch_um: float = 100.0,
    multiscale: bool | None = None,
) -> SpatialData:
    """A synthetic tissue section whose images, cells and expression follow a known rule.

    Cells of four types (tumour, stroma, lymphocyte, normal epithelium) lie in spatially coherent
    regions of an irregular piece of tissue. Each type has its own nuclear morphology and stain,
    and its own expression programme, so that what the tissue looks like predicts what it
    expresses; a few genes also follow nucleus area or local cell density continuously.

    Parameters
    ----------
    seed
        Random seed; ``None`` uses ``histoexpr.settings.seed``. The same seed gives identical data.
    size_um
        Side of the (square) section in micrometres, or its ``(width, height)``.
    mpp
        Pixel size of the images and label maps in um/px. The build peaks at about
        ``(size_um / mpp)**2 x 96`` bytes plus 40 a um^2 (cells, transcripts), estimated before
        anything is drawn and refused with a :class:`MemoryError` above the limit.
    proportions
        Share of the tissue area covered by regions of each cell type, as a mapping from type to a
        non-negative weight (normalised to sum to 1; missing types get 0). Defaults to
        tumour 0.3, stroma 0.3, lymphocyte 0.15, epithelium 0.25.
    mixing
        Share of the cells of a region that are not of the region's dominant type (0 to 1).
    region_scale_um
        Typical size of the regions (smoothing length of the random fields that draw them).
    transcripts
        Whether to sample the transcripts (``sdata.points["transcripts"]``). Turning them off
        (and the spots, which are built from them) makes the section faster to build.
    spots
        Whether to add Visium-like capture spots and their table (needs ``transcripts=True``).
    spot_diameter_um
        Diameter of the capture spots.
    spot_pitch_um
        Centre-to-centre distance of neighbouring spots on the hexagonal grid.
    multiscale
        Whether images and label maps are multiscale pyramids; ``None`` makes them multiscale when
        a side is longer than 1024 pixels.

    Returns
    -------
    A :class:`spatialdata.SpatialData` with, all in the micrometre ``"global"`` coordinate
    system (images and label maps carry ``Scale([mpp, mpp])``):

    - ``images["he"]``: RGB uint8 H&E-like image (channels ``r, g, b``);
    - ``images["dapi"]``: one-channel uint8 DAPI-like image (channel ``dapi``, nuclei bright);
    - ``labels["cells"]``: nucleus instance labels (0 = no nucleus), values = ``cell_id``;
    - ``labels["regions"]``: region map, 0 outside the tissue, ``i + 1`` in a region whose
      dominant type is ``attrs["synthetic"]["cell_types"][i]``;
    - ``tables["cells_table"]``: cells x genes counts (``X`` float32 CSR and ``layers["counts"]``)
      annotating ``labels["cells"]`` (``region_key="region"``, ``instance_key="cell_id"``), with
      ``obs`` columns ``cell_type``, ``region_type``, ``nucleus_area_um2``, ``elongation``,
      ``local_density`` (cells/mm^2 within 25 um), ``x``, ``y`` (um) and ``obsm["spatial"]``;
    - ``points["transcripts"]`` (if ``transcripts``): one row per count, columns ``x``, ``y``
      (um), ``gene`` and ``cell_id``;
    - ``shapes["spots"]`` and ``tables["table"]`` (if ``spots``): circles with ``radius`` in um
      on a hexagonal grid, kept where the centre lies in tissue, and their counts (spots x genes,
      ``obsm["spatial"]`` in um, ``obsm["cell_type_counts"]`` the number of cells of each type
      whose centre lies in the spot);
    - ``attrs["synthetic"]``: the generative rule (see Notes) and the arguments used.

    Notes
    -----
    The generative rule, stored as ``sdata.attrs["synthetic"]``:

    *Tissue and regions.* The tissue is a thresholded smooth random field plus a radial
    falloff (about 62 % of the section). Inside it, one smooth Gaussian random field per type
    (smoothing ``region_scale_um``) is shifted so that the argmax covers each type's share
    ``proportions``: this is ``labels["regions"]``. Epithelial regions hold gland lumens (empty).

    *Cells.* Nuclei sit on a jittered hexagonal lattice whose spacing is the region type's
    ``spacing_um``; a cell in a region of type ``r`` is of type ``t`` with probability
    ``mixing_matrix[r][t]`` (``1 - mixing`` on the diagonal; tumour cells only in tumour regions).
    Its nucleus is a wobbly ellipse with the morphology of its own type (``morphology``):

    ============  ==========  ==========  ============  =======  ============  =====
    type          radius um   elongation  irregularity  spacing  haematoxylin  eosin
    ============  ==========  ==========  ============  =======  ============  =====
    tumour        4.6         1.35        0.18          12       1.05          0.25
    stroma        2.9         3.2         0.04          20       0.80          0.45
    lymphocyte    2.4         1.05        0.03          7.5      1.35          0.12
    epithelium    3.6         1.15        0.04          12.5     0.60          0.30
    ============  ==========  ==========  ============  =======  ============  =====

    So the mean nucleus area orders tumour > epithelium > stroma > lymphocyte, lymphocytes are
    the densest and darkest, stroma nuclei are spindles aligned with the collagen fibres, and
    epithelial nuclei are the palest. Nuclei are drawn in random order without overwriting each
    other; cells that keep less than 40 % of their nucleus are dropped. The measured area is
    ``obs["nucleus_area_um2"]``.

    *Images.* The H&E image follows Beer-Lambert: optical density = haematoxylin x (0.56, 0.72,
    0.41) + eosin x (0.22, 0.80, 0.56) (the reference stain vectors of Macenko et al.),
    intensity = 255 x 10^-OD, with chromatin texture, collagen fibres in stroma, blur and noise.
    The DAPI image shows each nucleus with its type's ``dapi`` brightness.

    *Expression.* Counts of cell ``i`` of type ``t`` for gene ``g`` are negative binomial with
    mean ``programme[t][g] x L_i x A_ig x D_ig`` and dispersion ``dispersion`` (variance
    ``mu + mu^2 / dispersion``), where ``L_i`` is a log-normal library factor (sd
    ``library_sd``), ``A_ig = (area_i)^area_slope`` for the ``area_genes`` (proliferation) and
    ``D_ig = (density_i)^density_slope`` for the ``density_genes`` (hypoxia), 1 otherwise. Each
    factor is rescaled to mean 1 over the cells of a type, so ``programme[t][g]`` is exactly the
    expected mean count of gene ``g`` over cells of type ``t``. Every count is a transcript
    placed around its nucleus (normal, sd 1.2 x the nucleus radius), and a spot's counts are
    exactly the transcripts within ``spot_diameter_um / 2`` of its centre.

    Examples
    --------
    >>> import histoexpr as hx
    >>> sdata = hx.datasets.synthetic_section(seed=0, size_um=400)
    >>> sdata.attrs["synthetic"]["cell_types"]
    ['tumour', 'stroma', 'lymphocyte', 'epithelium']

    """
    import time

    start = time.perf_counter()
    transcripts, spots = check_bool("transcripts", transcripts), check_bool("spots", spots)
    if multiscale is not None:
        multiscale = check_bool("multiscale", multiscale)
    width_um, height_um = _check_size(size_um, mpp, what="The section")
    props = _check_proportions(proportions)
    check_fraction("mixing", mixing, closed="both")
    _check_positive("region_scale_um", region_scale_um)
    if spots and not transcripts:
        raise ValueError(
            "spots=True needs transcripts=True: a spot's counts are the transcripts that fall in "
            "it. Pass transcripts=True, or spots=False."
        )
    _check_positive("spot_diameter_um", spot_diameter_um)
    _check_positive("spot_pitch_um", spot_pitch_um)
    if spots and spot_diameter_um > spot_pitch_um:
        raise ValueError(
            f"spot_diameter_um ({spot_diameter_um}) is larger than spot_pitch_um "
            f"({spot_pitch_um}), so spots would overlap. Use a diameter at most the pitch."
        )
    value = resolve_seed(seed)
    sdata = _build_section(
        np.random.default_rng(value), width_um=width_um, height_um=height_um, mpp=float(mpp),
        proportions=props, mixing=float(mixing), region_scale_um=float(region_scale_um),
        transcripts=transcripts, spots=spots, spot_diameter_um=float(spot_diameter_um),
        spot_pitch_um=float(spot_pitch_um), multiscale=multiscale, seed=value,
    )
    n_cells = sdata.tables["cells_table"].n_obs
    extra = ""
    if transcripts:
        extra += f", {len(sdata.points['transcripts'])} transcripts"
    if spots:
        extra += f", {sdata.tables['table'].n_obs} spots"
    logger.info(
        "Built a synthetic section of %g x %g um at %g um/px: %d cells%s (%.1f s)",
        width_um, height_um, mpp, n_cells, extra, time.perf_counter() - start,
    )
    return sdata


# ---------------------------------------------------------------------------------------------
# argument checks


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a positive number, got {value!r}.")
    check_positive(name, value)


def _check_size(size_um, mpp: float, *, what: str) -> tuple[float, float]:
    """Width and height in um of ``size_um``; ``what`` (e.g. "Slides") is at least 32 pixels."""
    if isinstance(size_um, int | float | np.number) and not isinstance(size_um, bool):
        pair = (size_um, size_um)
    elif isinstance(size_um, tuple | list) and len(size_um) == 2:
        pair = tuple(size_um)
    else:
        raise ValueError(
            f"size_um must be a number (square section) or a (width, height) pair in um, "
            f"got {size_um!r}."
        )
    for v in pair:
        _check_positive("size_um", v)
    _check_positive("mpp", mpp)
    if min(pair) / mpp < 32:
        raise ValueError(
            f"{what} would be smaller than 32 pixels (size_um={size_um!r}, mpp={mpp}). "
            "Increase size_um or decrease mpp."
        )
    return float(pair[0]), float(pair[1])


def _check_proportions(proportions: Mapping[str, float] | None) -> dict[str, float]:
    if proportions is None:
        return dict(_rule.DEFAULT_PROPORTIONS)
    if not isinstance(proportions, Mapping):
        raise ValueError(
            f"proportions must be a mapping from cell type to weight, got {type(proportions)}."
        )
    unknown = sorted(set(proportions) - set(_rule.CELL_TYPES))
    if unknown:
        raise ValueError(
            f"proportions has unknown cell types {unknown}; the types are {list(_rule.CELL_TYPES)}."
        )
    weights = {t: float(proportions.get(t, 0.0)) for t in _rule.CELL_TYPES}
    if any(not np.isfinite(w) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(
            "proportions must be non-negative weights with a positive sum, "
            f"got {dict(proportions)}."
        )
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


# ---------------------------------------------------------------------------------------------
# the build


def _build_section(rng: np.random.Generator, *, width_um: float, height_um: float, mpp: float,
                   proportions: dict[str, float], mixing: float, region_scale_um: float,
                   transcripts: bool, spots: bool, spot_diameter_um: float, spot_pitch_um: float,
                   multiscale: bool | None, seed: int) -> SpatialData:
    """Everything after the argument checks (also used by ``synthetic_cohort``)."""
    from spatialdata import SpatialData

    shape = (max(1, round(height_um / mpp)), max(1, round(width_um / mpp)))
    layout = _layout(rng, shape, mpp, proportions, region_scale_um)
    cells = _place_cells(rng, layout, mpp, mixing)
    labels, cells = _draw_nuclei(rng, cells, shape, mpp, layout["fibre_coord"])
    cells["local_density"] = _local_density(cells)
    counts = _expression(rng, cells)
    he, dapi = _render(rng, layout, labels, cells, mpp)

    if multiscale is None:
        multiscale = max(shape) > 1024
    factors = _scale_factors(shape) if multiscale else None
    rule = _rule.rule_dict(mixing=mixing, proportions=proportions)
    rule.update({"seed": int(seed), "size_um": [width_um, height_um], "mpp": mpp,
                 "region_scale_um": region_scale_um})
    elements: dict = {
        "images": {"he": _image(he, ["r", "g", "b"], mpp, factors),
                   "dapi": _image(dapi, ["dapi"], mpp, factors)},
        "labels": {"cells": _labels(labels, mpp, factors),
                   "regions": _labels(layout["regions"], mpp, factors)},
        "tables": {"cells_table": _cell_table(cells, counts)},
    }
    if transcripts:
        points = _transcripts(rng, cells, counts, width_um, height_um)
        elements["points"] = {"transcripts": _points(points)}
        if spots:
            rule.update({"spot_diameter_um": spot_diameter_um, "spot_pitch_um": spot_pitch_um})
            shapes, table = _spots(points, cells, layout["regions"], mpp, width_um, height_um,
                                   spot_diameter_um, spot_pitch_um)
            elements["shapes"] = {"spots": shapes}
            elements["tables"]["table"] = table
    sdata = SpatialData(**elements)
    sdata.attrs["synthetic"] = rule
    return sdata
