"""The tissue of a synthetic section: random fields, regions, cells, nuclei, expression and H&E."""

from __future__ import annotations

import numpy as np

from . import _rule

_COARSE_UM = 4.0  # grid step of the smooth random fields
_TISSUE_FRACTION = 0.62  # share of the section covered by tissue
_GLAND_SCALE_UM = 9.0  # smoothing of the field that carves gland lumens
_FIBRE_PERIOD_UM = 5.0  # spacing of the collagen fibres drawn in stroma
_N_VERTICES = 20
#: memory of a build: per pixel (fields, masks, images), per um^2 (cells and their transcripts)
_BYTES_PER_PX = 96
_BYTES_PER_UM2 = 40
# optical density of one unit of stain in (r, g, b): the reference H&E vectors of Macenko et al.
_STAIN_H = np.array([0.5626, 0.7201, 0.4062], dtype=np.float32)
_STAIN_E = np.array([0.2159, 0.8012, 0.5581], dtype=np.float32)


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


def section_bytes(shape: tuple[int, int], mpp: float) -> float:
    """The memory that building a section of ``shape`` pixels at ``mpp`` um/px peaks at (bytes).

    The per-pixel fields, masks and images, and the cells and transcripts, which grow with the
    area in um^2 (measured with tracemalloc: 91-99 B/px at 0.25-2 um/px without transcripts,
    200 B/px at 2 um/px with them).
    """
    n_px = float(shape[0]) * shape[1]
    return n_px * (_BYTES_PER_PX + _BYTES_PER_UM2 * mpp**2)


def check_section_memory(shape: tuple[int, int], mpp: float) -> None:
    """Refuse, before anything is drawn, a section whose build would exceed the memory limit."""
    from .._core.memory import check_memory

    check_memory(
        section_bytes(shape, mpp),
        f"A synthetic section of {shape[1] * mpp:g} x {shape[0] * mpp:g} um at {mpp:g} um/px "
        f"({shape[1]:,} x {shape[0]:,} px, about {_BYTES_PER_PX} bytes a pixel)",
        "Pass a smaller size_um or a coarser mpp (the memory falls with the square of both).")


def _layout(rng, shape, mpp, proportions, region_scale_um) -> dict:
    """Tissue mask, regions of each dominant type, gland lumens and the stroma fibre phase."""
    check_section_memory(shape, mpp)
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
