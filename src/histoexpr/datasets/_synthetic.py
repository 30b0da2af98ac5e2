"""A synthetic tissue section: H&E and DAPI images, nuclei, cell types, transcripts and spots.

The section is drawn from a fixed generative rule (``_rule.py``) so that every later step
(tiling, learning, prediction) can be checked against a known truth.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from .._utils import logger, resolve_seed
from .._validate import check_fraction, check_positive
from . import _rule

if TYPE_CHECKING:
    from spatialdata import SpatialData

_COARSE_UM = 4.0  # grid step of the smooth random fields
_TISSUE_FRACTION = 0.62  # share of the section covered by tissue
_GLAND_SCALE_UM = 9.0  # smoothing of the field that carves gland lumens
_FIBRE_PERIOD_UM = 5.0  # spacing of the collagen fibres drawn in stroma
_N_VERTICES = 20
# optical density of one unit of stain in (r, g, b): the reference H&E vectors of Macenko et al.
_STAIN_H = np.array([0.5626, 0.7201, 0.4062], dtype=np.float32)
_STAIN_E = np.array([0.2159, 0.8012, 0.5581], dtype=np.float32)


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
        Pixel size of the images and label maps in um/px.
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
    width_um, height_um = _check_size(size_um)
    _check_positive("mpp", mpp)
    if min(width_um, height_um) / mpp < 32:
        raise ValueError(
            f"The section would be smaller than 32 pixels (size_um={size_um!r}, mpp={mpp}). "
            "Increase size_um or decrease mpp."
        )
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


def _check_size(size_um) -> tuple[float, float]:
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


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """A smooth Gaussian random field with zero mean and unit standard deviation."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-12)


def _interp_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower neighbours and linear weights mapping ``n_out`` pixels onto ``n_in`` (area-aligned)."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.minimum(np.floor(pos).astype(np.intp), max(n_in - 2, 0))
    frac = np.clip(pos - lo, 0, 1).astype(np.float32)
    return lo, frac


def _upsample(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resampling of a coarse field to ``shape``, aligning pixel areas."""
    field = field.astype(np.float32)
    if field.shape[0] == 1 or field.shape[1] == 1:
        field = np.repeat(np.repeat(field, 2, axis=0), 2, axis=1)
    lo, w = _interp_weights(shape[0], field.shape[0])
    rows = field[lo] * (1 - w)[:, None] + field[lo + 1] * w[:, None]
    lo, w = _interp_weights(shape[1], field.shape[1])
    return rows[:, lo] * (1 - w) + rows[:, lo + 1] * w


def _noise(rng, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Smooth noise of unit standard deviation and correlation length ``sigma_px`` pixels.

    Long correlations are drawn on a coarser grid and upsampled, which is much cheaper.
    """
    from scipy.ndimage import gaussian_filter

    step = max(1.0, sigma_px / 3.0)
    coarse = (max(2, int(np.ceil(shape[0] / step))), max(2, int(np.ceil(shape[1] / step))))
    field = gaussian_filter(rng.standard_normal(coarse, dtype=np.float32),
                            sigma_px * coarse[0] / shape[0])
    field /= field.std() + 1e-12
    return field if coarse == shape else _upsample(field, shape)


def _layout(rng, shape, mpp, proportions, region_scale_um) -> dict:
    """Tissue mask, regions of each dominant type, gland lumens and the stroma fibre phase."""
    height_um, width_um = shape[0] * mpp, shape[1] * mpp
    coarse = (max(8, round(height_um / _COARSE_UM)), max(8, round(width_um / _COARSE_UM)))
    step = (height_um / coarse[0], width_um / coarse[1])
    sigma_px = lambda um: (um / step[0], um / step[1])  # noqa: E731

    # tissue: radial falloff plus a broad and a fine random field, thresholded at a quantile
    yy, xx = np.mgrid[: coarse[0], : coarse[1]]
    d = np.hypot((yy + 0.5) / coarse[0] - 0.5, (xx + 0.5) / coarse[1] - 0.5) / 0.5
    broad = _smooth_field(rng, coarse, sigma_px(min(height_um, width_um) / 6))
    fine = _smooth_field(rng, coarse, sigma_px(25.0))
    score = -d + 0.3 * broad + 0.06 * fine
    score -= np.quantile(score, 1 - _TISSUE_FRACTION)
    tissue_coarse = score > 0

    # regions: argmax of one field per type, shifted to match the proportions in the tissue
    fields = np.stack([_smooth_field(rng, coarse, sigma_px(region_scale_um))
                       for _ in _rule.CELL_TYPES])
    target = np.array([proportions[t] for t in _rule.CELL_TYPES])
    bias = np.where(target > 0, 0.0, -np.inf)
    inside = fields[:, tissue_coarse]
    for _ in range(30):
        share = np.bincount(np.argmax(inside + bias[:, None], axis=0),
                            minlength=len(target)) / max(inside.shape[1], 1)
        ok = target > 0
        bias[ok] += 0.5 * (np.log(target[ok]) - np.log(np.maximum(share[ok], 1e-3)))
    bias = np.where(np.isfinite(bias), bias, -1e6)

    # the smooth decisions are taken at about 1 um/px and repeated to the full grid
    factor = max(1, int(round(1.0 / mpp)))
    mid = (-(-shape[0] // factor), -(-shape[1] // factor))
    tissue = _upsample(score, mid) > 0
    scores = np.stack([_upsample(f, mid) for f in fields])
    scores += bias[:, None, None].astype(np.float32)
    regions = (np.argmax(scores, axis=0) + 1).astype(np.uint8)
    regions[~tissue] = 0

    # gland lumens in epithelial regions (a finer field, computed at 2 um)
    medium = (max(8, round(height_um / 2.0)), max(8, round(width_um / 2.0)))
    lumen_field = _upsample(
        _smooth_field(rng, medium, (_GLAND_SCALE_UM / (height_um / medium[0]),
                                    _GLAND_SCALE_UM / (width_um / medium[1]))), mid)
    epithelium = regions == _rule.CELL_TYPES.index("epithelium") + 1
    lumen = epithelium & (lumen_field > 0.9)
    if factor > 1:
        rows = np.arange(shape[0]) // factor
        cols = np.arange(shape[1]) // factor
        tissue, regions, lumen, lumen_field = (
            a[rows][:, cols] for a in (tissue, regions, lumen, lumen_field))

    # stroma fibres: the phase of a wavy stripe pattern at a random mean angle
    angle = rng.uniform(0, np.pi)
    warp = _upsample(_smooth_field(rng, coarse, sigma_px(50.0)), shape) * 30.0
    y_um = ((np.arange(shape[0], dtype=np.float32) + 0.5) * mpp)[:, None]
    x_um = ((np.arange(shape[1], dtype=np.float32) + 0.5) * mpp)[None, :]
    fibre_coord = x_um * np.float32(np.cos(angle)) + y_um * np.float32(np.sin(angle)) + warp
    return {"tissue": tissue, "regions": regions, "lumen": lumen, "fibre_coord": fibre_coord,
            "lumen_field": lumen_field}


def _hex_lattice(rng, width_um, height_um, spacing):
    """Jittered hexagonal lattice points covering the section."""
    dy = spacing * np.sqrt(3) / 2
    ys = np.arange(rng.uniform(0, dy), height_um, dy)
    xs = np.arange(rng.uniform(0, spacing), width_um + spacing, spacing)
    gx, gy = np.meshgrid(xs, ys)
    gx = gx + (np.arange(len(ys))[:, None] % 2) * spacing / 2
    points = np.column_stack([gx.ravel(), gy.ravel()])
    points += rng.uniform(-0.3, 0.3, points.shape) * spacing
    keep = (points[:, 0] >= 0) & (points[:, 0] < width_um) & (points[:, 1] >= 0) & (
        points[:, 1] < height_um)
    return points[keep]


def _place_cells(rng, layout, mpp, mixing) -> dict:
    """Cell centres, region type and own type (before drawing)."""
    regions, lumen = layout["regions"], layout["lumen"]
    height_um, width_um = regions.shape[0] * mpp, regions.shape[1] * mpp
    xy_parts, region_parts = [], []
    for k, cell_type in enumerate(_rule.CELL_TYPES):
        spacing = _rule.MORPHOLOGY[cell_type]["spacing_um"]
        points = _hex_lattice(rng, width_um, height_um, spacing)
        row = np.minimum((points[:, 1] / mpp).astype(int), regions.shape[0] - 1)
        col = np.minimum((points[:, 0] / mpp).astype(int), regions.shape[1] - 1)
        keep = (regions[row, col] == k + 1) & ~lumen[row, col]
        if cell_type == "epithelium":
            # glands: epithelial cells line the lumens, the rest of the region is loose
            near = layout["lumen_field"][row, col] > 0.2
            keep &= near | (rng.random(len(points)) < 0.15)
        xy_parts.append(points[keep])
        region_parts.append(np.full(int(keep.sum()), k))
    xy = np.concatenate(xy_parts)
    region = np.concatenate(region_parts)
    matrix = _rule.mixing_matrix(mixing)
    cum = np.cumsum(matrix[region], axis=1)
    cell_type = (rng.random(len(region))[:, None] > cum).sum(axis=1)
    cell_type = np.minimum(cell_type, len(_rule.CELL_TYPES) - 1)
    return {"xy": xy, "region_type": region, "cell_type": cell_type}


def _draw_nuclei(rng, cells, shape, mpp, fibre_coord):
    """Draw the nuclei into an instance label map; drop the cells that are mostly hidden."""
    from skimage.draw import polygon

    n = len(cells["xy"])
    morph = {key: np.array([_rule.MORPHOLOGY[t][key] for t in _rule.CELL_TYPES])
             for key in _rule.MORPHOLOGY["tumour"]}
    t = cells["cell_type"]
    radius = morph["radius_um"][t] * np.exp(0.12 * rng.standard_normal(n))
    elong = np.maximum(1.0, morph["elongation"][t] * np.exp(0.12 * rng.standard_normal(n)))
    irregular = morph["irregularity"][t]
    angle = rng.uniform(0, np.pi, n)
    # stroma nuclei follow the fibres (fibre_coord is constant along a fibre)
    stroma = t == _rule.CELL_TYPES.index("stroma")
    if stroma.any():
        fibre = _fibre_angle(fibre_coord, cells["xy"][stroma], mpp)
        angle[stroma] = fibre + 0.15 * rng.standard_normal(int(stroma.sum()))
    a, b = radius * np.sqrt(elong), radius / np.sqrt(elong)

    theta = np.linspace(0, 2 * np.pi, _N_VERTICES, endpoint=False)
    r_ellipse = (a * b)[:, None] / np.sqrt((b[:, None] * np.cos(theta)) ** 2
                                           + (a[:, None] * np.sin(theta)) ** 2)
    wobble = np.zeros((n, _N_VERTICES))
    for harmonic in (2, 3, 5):
        wobble += (rng.standard_normal((n, 1)) / harmonic ** 0.5
                   * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi, (n, 1))))
    r = r_ellipse * np.clip(1 + irregular[:, None] * wobble, 0.5, 1.6)
    ca, sa = np.cos(angle)[:, None], np.sin(angle)[:, None]
    vx = cells["xy"][:, [0]] + r * (np.cos(theta) * ca - np.sin(theta) * sa)
    vy = cells["xy"][:, [1]] + r * (np.cos(theta) * sa + np.sin(theta) * ca)
    cols, rows = vx / mpp - 0.5, vy / mpp - 0.5

    labels = np.zeros(shape, dtype=np.int32)
    for i in rng.permutation(n):
        rr, cc = polygon(rows[i], cols[i], shape)
        free = labels[rr, cc] == 0
        labels[rr[free], cc[free]] = i + 1
    area_px = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    intended_px = np.pi * radius ** 2 / mpp ** 2
    keep = (area_px >= 0.4 * intended_px) & (area_px >= 3)
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    labels = lut[labels]
    kept = {key: value[keep] for key, value in cells.items()}
    kept.update({
        "cell_id": np.arange(1, int(keep.sum()) + 1),
        "nucleus_area_um2": area_px[keep] * mpp ** 2,
        "radius_um": radius[keep],
        "elongation": elong[keep],
        "haematoxylin": morph["haematoxylin"][t][keep] * np.exp(0.1 * rng.standard_normal(n))[keep],
    })
    return labels, kept


def _fibre_angle(fibre_coord: np.ndarray, xy: np.ndarray, mpp: float) -> np.ndarray:
    """Direction (radians, in x-y) of the stroma fibres at ``xy``: along the stripes' level sets."""
    height, width = fibre_coord.shape
    row = np.clip((xy[:, 1] / mpp).astype(int), 1, height - 2)
    col = np.clip((xy[:, 0] / mpp).astype(int), 1, width - 2)
    gx = fibre_coord[row, col + 1] - fibre_coord[row, col - 1]
    gy = fibre_coord[row + 1, col] - fibre_coord[row - 1, col]
    return np.arctan2(gx, -gy)


def _local_density(cells, radius_um: float = 25.0) -> np.ndarray:
    """Cells per mm^2 within ``radius_um`` of each cell (the cell itself included)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(cells["xy"])
    count = tree.query_ball_point(cells["xy"], radius_um, return_length=True)
    return count / (np.pi * radius_um ** 2) * 1e6


def _within_type_factor(values: np.ndarray, types: np.ndarray, slope: float) -> np.ndarray:
    """``values ** slope`` rescaled to mean 1 within each type."""
    factor = np.power(np.maximum(values, 1e-9), slope)
    out = np.ones_like(factor)
    for k in np.unique(types):
        sel = types == k
        out[sel] = factor[sel] / factor[sel].mean()
    return out


def _expression(rng, cells) -> np.ndarray:
    """Negative-binomial counts (cells x genes) from the type programmes and the covariates."""
    types = cells["cell_type"]
    n = len(types)
    mean = _rule.programme()[types].copy()
    if n == 0:
        return np.zeros((0, len(_rule.GENES)), dtype=np.int64)
    library = _within_type_factor(np.exp(_rule.LIBRARY_SD * rng.standard_normal(n)), types, 1.0)
    mean *= library[:, None]
    genes = list(_rule.GENES)
    area = _within_type_factor(cells["nucleus_area_um2"], types, _rule.AREA_SLOPE)
    density = _within_type_factor(cells["local_density"], types, _rule.DENSITY_SLOPE)
    for gene in _rule.AREA_GENES:
        mean[:, genes.index(gene)] *= area
    for gene in _rule.DENSITY_GENES:
        mean[:, genes.index(gene)] *= density
    theta = _rule.DISPERSION
    rate = rng.gamma(theta, mean / theta)
    return rng.poisson(rate)


def _render(rng, layout, labels, cells, mpp):
    """H&E (3, y, x) and DAPI (1, y, x) uint8 images."""
    from scipy.ndimage import gaussian_filter

    shape = labels.shape
    regions, tissue, lumen = layout["regions"], layout["tissue"], layout["lumen"]
    f32 = np.float32
    types = cells["cell_type"]
    morph = {key: np.array([_rule.MORPHOLOGY[t][key] for t in _rule.CELL_TYPES])
             for key in ("haematoxylin", "dapi", "eosin")}

    # haematoxylin: nuclei with a chromatin texture, and a faint wash over the tissue
    h_lut = np.concatenate([[0.0], cells["haematoxylin"]]).astype(f32)
    relative = cells["haematoxylin"] / morph["haematoxylin"][types]
    dapi_lut = np.concatenate([[0.0], morph["dapi"][types] * relative]).astype(f32)
    chromatin = np.clip(1 + 0.22 * _noise(rng, shape, 0.5 / mpp), 0.55, 1.45)
    wash_lut = np.array([0.0, 0.12, 0.05, 0.06, 0.06], dtype=f32)
    hema = h_lut[labels] * chromatin + wash_lut[regions] * (1 + 0.3 * _noise(rng, shape, 2.0 / mpp))

    # eosin: cytoplasm / matrix of each region type, collagen fibres in stroma, empty lumens
    e_lut = np.concatenate([[0.0], morph["eosin"]]).astype(f32)
    eosin = e_lut[regions]
    eosin[lumen] = 0.02
    eosin = gaussian_filter(eosin, 2.0 / mpp)
    stroma = gaussian_filter(
        (regions == _rule.CELL_TYPES.index("stroma") + 1).astype(f32), 2.0 / mpp)
    phase = layout["fibre_coord"] / f32(_FIBRE_PERIOD_UM) + 0.6 * _noise(rng, shape, 8.0 / mpp)
    fibres = np.abs(np.sin(f32(np.pi) * phase)) ** 3
    breaks = np.clip(0.6 + 0.5 * _noise(rng, shape, 3.0 / mpp), 0, 1)
    eosin *= 1 - stroma * 0.6 * (1 - fibres * breaks)
    eosin *= np.clip(1 + 0.15 * _noise(rng, shape, 1.0 / mpp), 0.5, 1.5)
    # cells carry a rim of cytoplasm: a little more eosin around each nucleus
    eosin += 0.08 * gaussian_filter((labels > 0).astype(f32), 2.0 / mpp)
    eosin *= gaussian_filter(tissue.astype(f32), 1.5 / mpp)

    # optical blur: OD is linear in the stains, so blurring the sharp one (nuclei) suffices
    hema = gaussian_filter(hema, 0.35 / mpp)
    od = hema[..., None] * _STAIN_H + eosin[..., None] * _STAIN_E + f32(0.03)
    rgb = 255 * np.exp(od * f32(-np.log(10)))
    rgb += 2.5 * rng.standard_normal(rgb.shape, dtype=f32)
    he = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

    dapi = gaussian_filter(dapi_lut[labels] * chromatin, 0.5 / mpp)
    dapi = 230 * dapi + 6 + 2 * rng.standard_normal(shape, dtype=f32)
    dapi = np.clip(np.rint(dapi), 0, 255).astype(np.uint8)
    return np.moveaxis(he, -1, 0), dapi[None]


def _transcripts(rng, cells, counts, width_um, height_um):
    """One point per count, scattered around its nucleus."""
    import pandas as pd

    per_cell = counts.sum(axis=1)
    cell_index = np.repeat(np.arange(len(per_cell)), per_cell)
    cell_rows, gene_index = np.nonzero(counts)
    # genes in cell-major order: for each cell, each gene repeated by its count
    gene = np.repeat(gene_index, counts[cell_rows, gene_index])
    sd = 1.2 * cells["radius_um"][cell_index]
    x = cells["xy"][cell_index, 0] + sd * rng.standard_normal(len(cell_index))
    y = cells["xy"][cell_index, 1] + sd * rng.standard_normal(len(cell_index))
    x = np.clip(x, 0, np.nextafter(width_um, 0))
    y = np.clip(y, 0, np.nextafter(height_um, 0))
    return pd.DataFrame({
        "x": x, "y": y,
        "gene": pd.Categorical.from_codes(gene, categories=list(_rule.GENES)),
        "cell_id": cells["cell_id"][cell_index].astype(np.int64),
    })


def _points(frame):
    from spatialdata.models import PointsModel

    return PointsModel.parse(frame, coordinates={"x": "x", "y": "y"}, feature_key="gene",
                             instance_key="cell_id")


def _spots(points, cells, regions, mpp, width_um, height_um, diameter, pitch):
    """Hexagonal capture spots over the tissue and the transcripts each one catches."""
    import anndata as ad
    import geopandas as gpd
    import pandas as pd
    from scipy import sparse
    from scipy.spatial import cKDTree
    from shapely import points as shapely_points
    from spatialdata.models import ShapesModel, TableModel

    radius = diameter / 2
    dy = pitch * np.sqrt(3) / 2
    rows = np.arange(int(np.floor((height_um - 2 * radius) / dy)) + 1)
    cols = np.arange(int(np.floor((width_um - 2 * radius - pitch / 2) / pitch)) + 1)
    grid_r, grid_c = np.meshgrid(rows, cols, indexing="ij")
    cx = radius + grid_c * pitch + (grid_r % 2) * pitch / 2
    cy = radius + grid_r * dy
    # centre the grid on the section
    cx = cx + (width_um - (cx.max() + radius)) / 2 if cx.size else cx
    cy = cy + (height_um - (cy.max() + radius)) / 2 if cy.size else cy
    centres = np.column_stack([cx.ravel(), cy.ravel()])
    array_row, array_col = grid_r.ravel(), 2 * grid_c.ravel() + grid_r.ravel() % 2
    pr = np.minimum((centres[:, 1] / mpp).astype(int), regions.shape[0] - 1)
    pc = np.minimum((centres[:, 0] / mpp).astype(int), regions.shape[1] - 1)
    keep = regions[pr, pc] > 0
    centres, array_row, array_col = centres[keep], array_row[keep], array_col[keep]
    n_spots, n_genes = len(centres), len(_rule.GENES)

    def assign(xy):
        if n_spots == 0 or len(xy) == 0:
            return np.full(len(xy), -1)
        dist, index = cKDTree(centres).query(xy, distance_upper_bound=radius)
        return np.where(np.isfinite(dist), index, -1)

    spot_of = assign(points[["x", "y"]].to_numpy())
    inside = spot_of >= 0
    counts = sparse.coo_matrix(
        (np.ones(int(inside.sum()), dtype=np.float32),
         (spot_of[inside], points["gene"].cat.codes.to_numpy()[inside])),
        shape=(n_spots, n_genes)).tocsr()
    counts.sum_duplicates()
    cell_spot = assign(cells["xy"])
    cell_type_counts = np.zeros((n_spots, len(_rule.CELL_TYPES)), dtype=np.int64)
    np.add.at(cell_type_counts, (cell_spot[cell_spot >= 0], cells["cell_type"][cell_spot >= 0]),
              1)

    spot_id = np.arange(n_spots)
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame({"radius": np.full(n_spots, radius)},
                         geometry=shapely_points(centres), index=pd.Index(spot_id)))
    obs = pd.DataFrame({
        "spot_id": spot_id,
        "region": pd.Categorical(["spots"] * n_spots),
        "array_row": array_row.astype(np.int64),
        "array_col": array_col.astype(np.int64),
    }, index=pd.Index(spot_id.astype(str)))
    table = ad.AnnData(X=counts.astype(np.float32), obs=obs,
                       var=pd.DataFrame(index=pd.Index(list(_rule.GENES))))
    table.layers["counts"] = table.X.copy()
    table.obsm["spatial"] = centres.astype(np.float64)
    table.obsm["cell_type_counts"] = pd.DataFrame(cell_type_counts, index=obs.index,
                                                  columns=list(_rule.CELL_TYPES))
    table = TableModel.parse(table, region="spots", region_key="region", instance_key="spot_id")
    return shapes, table


def _cell_table(cells, counts):
    import anndata as ad
    import pandas as pd
    from scipy import sparse
    from spatialdata.models import TableModel

    n = len(cells["cell_id"])
    types = list(_rule.CELL_TYPES)
    obs = pd.DataFrame({
        "cell_id": cells["cell_id"].astype(np.int64),
        "region": pd.Categorical(["cells"] * n),
        "cell_type": pd.Categorical.from_codes(cells["cell_type"], categories=types),
        "region_type": pd.Categorical.from_codes(cells["region_type"], categories=types),
        "nucleus_area_um2": cells["nucleus_area_um2"].astype(np.float64),
        "elongation": cells["elongation"].astype(np.float64),
        "local_density": cells["local_density"].astype(np.float64),
        "x": cells["xy"][:, 0], "y": cells["xy"][:, 1],
    }, index=pd.Index(cells["cell_id"].astype(str)))
    X = sparse.csr_matrix(counts.astype(np.float32))
    table = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(list(_rule.GENES))))
    table.layers["counts"] = X.copy()
    table.obsm["spatial"] = cells["xy"].astype(np.float64)
    return TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")


def _scale_factors(shape) -> list[int]:
    factors, side = [], max(shape)
    while side > 512 and min(shape) / 2 ** (len(factors) + 1) >= 64:
        factors.append(2)
        side //= 2
    return factors


def _transform(mpp):
    from spatialdata.transformations import Scale

    return {"global": Scale([mpp, mpp], axes=("y", "x"))}


def _image(array, channels, mpp, factors):
    from spatialdata.models import Image2DModel

    return Image2DModel.parse(array, dims=("c", "y", "x"), c_coords=channels,
                              transformations=_transform(mpp), scale_factors=factors or None,
                              chunks=(len(channels), 1024, 1024))


def _labels(array, mpp, factors):
    from spatialdata.models import Labels2DModel

    return Labels2DModel.parse(array, dims=("y", "x"), transformations=_transform(mpp),
                               scale_factors=factors or None, chunks=(1024, 1024))
