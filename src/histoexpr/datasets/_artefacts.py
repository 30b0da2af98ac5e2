"""A synthetic glass slide: a section beside the artefacts of real slides, with their truth."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from .._core.seeds import resolve_seed
from .._core.validate import check_positive

if TYPE_CHECKING:
    from spatialdata import SpatialData

Artefact = Literal["halo", "pen", "bubble", "dust"]
ARTEFACTS: tuple[str, ...] = get_args(Artefact)
#: codes of ``labels["artefacts"]``
ARTEFACT_CODES = {name: i + 1 for i, name in enumerate(ARTEFACTS)}
# optical density (RGB) of the inks, per unit of ink: blue, green and black pens
_INKS = (np.array([0.9, 0.6, 0.15]), np.array([0.8, 0.25, 0.55]), np.array([0.9, 0.9, 0.9]))
_EOSIN = np.array([0.2159, 0.8012, 0.5581])  # the synthetic section's eosin
_GLASS_OD = 0.03  # the synthetic section's glass
#: memory of drawing the slide per pixel of glass (measured with tracemalloc: 154-158 B/px)
_BYTES_PER_GLASS_PX = 170


def synthetic_artefact_slide(
    *,
    seed: int | None = None,
    tissue_um: float = 800.0,
    mpp: float = 2.0,
    artefacts: Sequence[str] = ARTEFACTS,
) -> SpatialData:
    """A synthetic slide: a section of tissue on glass beside the artefacts of real slides.

    The tissue is a :func:`~histoexpr.datasets.synthetic_section` (without transcripts or
    spots) placed on the left of a glass twice its width and 1.5 times its height. Beside it, on
    the glass, lie the chosen ``artefacts``, each where its pixels are known:

    - ``"halo"``: a pale smear of eosin touching the right of the section (optical density up
      to 0.05, as the eosin halos beside her2st sections);
    - ``"pen"``: three strokes of pen, 60 um wide: blue, green and black ink;
    - ``"bubble"``: the rims (6 um wide, grey) of two air bubbles, 300 and 160 um across;
    - ``"dust"``: 40 grey specks, 6-20 um across.

    The glass has 3 times the section's pixels and drawing it takes about 170 bytes a pixel,
    ``3 x (tissue_um / mpp)**2 x 170`` bytes in all; that is estimated before anything is drawn
    and refused with a :class:`MemoryError` when it exceeds the limit.

    Parameters
    ----------
    seed
        Random seed; ``None`` uses ``histoexpr.settings.seed``.
    tissue_um
        Side of the section in micrometres.
    mpp
        Pixel size in um/px.
    artefacts
        Which artefacts to draw, of ``"halo"``, ``"pen"``, ``"bubble"``, ``"dust"``.

    Returns
    -------
    A :class:`spatialdata.SpatialData` with ``images["he"]`` (RGB uint8), ``labels["tissue"]``
    (1 on the section's tissue, 0 elsewhere) and ``labels["artefacts"]`` (0 where there is none,
    else the code of the artefact drawn there: halo 1, pen 2, bubble 3, dust 4), all with
    ``Scale([mpp, mpp])`` to the ``"global"`` coordinate system in micrometres.

    Examples
    --------
    >>> import histoexpr as hx
    >>> slide = hx.datasets.synthetic_artefact_slide(seed=0)  # doctest: +SKIP
    >>> hx.pp.detect_tissue(slide, "he")  # doctest: +SKIP

    """
    from scipy import ndimage
    from spatialdata import SpatialData

    from ._synthetic import synthetic_section
    from ._synthetic_elements import _image, _labels

    check_positive("tissue_um", tissue_um, unit="um")
    check_positive("mpp", mpp, unit="um/px")
    unknown = [a for a in artefacts if a not in ARTEFACTS]
    if unknown:
        raise ValueError(f"Unknown artefact(s) {unknown}: choose among {list(ARTEFACTS)}.")
    _check_slide_memory(tissue_um, mpp)
    rng = np.random.default_rng(resolve_seed(seed))
    section = synthetic_section(seed=int(rng.integers(2**31)), size_um=tissue_um, mpp=mpp,
                                transcripts=False, spots=False, multiscale=False)
    he = np.asarray(section.images["he"].values)
    truth = np.asarray(section.labels["regions"].values) > 0
    side = he.shape[1]
    height, width = int(round(1.5 * side)), 2 * side
    top = (height - side) // 2
    od = np.full((height, width, 3), _GLASS_OD, dtype=np.float64)
    tissue = np.zeros((height, width), dtype=bool)
    od[top:top + side, :side] = -np.log10(np.maximum(np.moveaxis(he, 0, -1), 1) / 255.0)
    tissue[top:top + side, :side] = truth
    codes = np.zeros((height, width), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width] * mpp  # um
    um = side * mpp

    def paint(where: np.ndarray, density: np.ndarray, colour: np.ndarray, name: str) -> None:
        where = where & ~tissue
        od[where] += density[where, None] * colour
        codes[where] = ARTEFACT_CODES[name]

    if "halo" in artefacts:
        # a smooth wash from the section's right edge into the glass
        right = np.array([np.flatnonzero(row).max() if row.any() else 0 for row in tissue])
        reach = xx - right[:, None] * mpp
        profile = np.exp(-(((yy - (top * mpp + um / 2)) / (0.35 * um)) ** 2))
        density = 0.06 * profile * np.exp(-np.clip(reach, 0, None) / (0.25 * um))
        paint((reach > 0) & (density > 0.004), density / _EOSIN.mean(), _EOSIN, "halo")
    if "pen" in artefacts:
        for i, ink in enumerate(_INKS):
            x0 = um * (1.25 + 0.22 * i)
            centre = x0 + 0.08 * um * np.sin(yy / (0.3 * um) + i)
            stroke = (np.abs(xx - centre) < 30) & (yy > 0.15 * um) & (yy < 1.35 * um)
            paint(stroke, np.full(stroke.shape, 1.0), ink, "pen")
    if "bubble" in artefacts:
        for cx, cy, radius in ((1.3 * um, 0.12 * um, 150.0), (1.8 * um, 1.3 * um, 80.0)):
            rim = np.abs(np.hypot(xx - cx, yy - cy) - radius) < 3
            paint(rim, np.full(rim.shape, 0.5), np.ones(3), "bubble")
    if "dust" in artefacts:
        for _ in range(40):
            cx, cy = rng.uniform(0.05, 0.95) * width * mpp, rng.uniform(0.05, 0.95) * height * mpp
            speck = np.hypot(xx - cx, yy - cy) < rng.uniform(3, 10)
            paint(speck, np.full(speck.shape, 0.6), np.ones(3), "dust")
    od = ndimage.gaussian_filter(od, (0.35 / mpp, 0.35 / mpp, 0))
    rgb = 255 * 10 ** -od + 2.5 * rng.standard_normal(od.shape)
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return SpatialData(images={"he": _image(np.moveaxis(rgb, -1, 0), ["r", "g", "b"], mpp, [])},
                       labels={"tissue": _labels(tissue.astype(np.uint8), mpp, []),
                               "artefacts": _labels(codes, mpp, [])})


def _check_slide_memory(tissue_um: float, mpp: float) -> None:
    """Refuse, before the section is built, a slide whose drawing would exceed the memory limit."""
    from .._core.memory import check_memory
    from ._synthetic_tissue import section_bytes

    side = max(1, round(tissue_um / mpp))
    height, width = int(round(1.5 * side)), 2 * side
    check_memory(
        max(float(height) * width * _BYTES_PER_GLASS_PX, section_bytes((side, side), mpp)),
        f"A synthetic artefact slide of {width * mpp:g} x {height * mpp:g} um at {mpp:g} um/px "
        f"({width:,} x {height:,} px, about {_BYTES_PER_GLASS_PX} bytes a pixel; "
        f"tissue_um={tissue_um:g})",
        "Pass a smaller tissue_um or a coarser mpp (the memory falls with the square of both).")
