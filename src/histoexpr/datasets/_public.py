"""Real public data sets, read with histoexpr's own readers (files from :mod:`._registry`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ._registry import fetch

if TYPE_CHECKING:
    from spatialdata import SpatialData

_HER2ST_IMAGES = {
    "C2": "C2_5714_HE_BT_C2.jpg",
    "C3": "C3_5714_HE_BT_D1.jpg",
    "C4": "C4_5714_HE_BT_D2.jpg",
}
#: the MERFISH crop's pixel size (um/px) and the mosaic coordinates (um) of its pixel (0, 0)
MERFISH_MPP = 0.108627
MERFISH_OFFSET = (6400.029, 4699.967)
_SLIDES = {
    "CMU-1-Small-Region": "wsi/CMU-1-Small-Region.svs",
    "test3-DAPI-2-387": "wsi/test3-DAPI-2-387.ndpi",
}


def _choice(value, choices, what: str):
    if value not in choices:
        raise ValueError(f"{what}={value!r} is not one of this data set's: {sorted(choices)}.")
    return value


def her2st(section_id: Literal["C2", "C3", "C4"] = "C2", *, download: bool = True) -> SpatialData:
    """One section of the HER2-positive breast cancer data set (legacy ST, 100 um spots).

    Patient C of Andersson et al. (2021, *Nat Commun*), from the public repository
    ``almaan/her2st``: full-resolution H&E (about 9,300 x 9,900 px, 0.69 um/px), raw counts of
    about 15,700 genes, spot positions. Read by :func:`histoexpr.io.read_st`.

    Parameters
    ----------
    section_id
        ``"C2"``, ``"C3"`` or ``"C4"``.
    download
        Download the files that are missing from the data folder
        (:attr:`histoexpr.settings.datasets_dir`, ``$HISTOEXPR_DATA_DIR``, else
        ``~/.cache/histoexpr/data``); with ``False`` a missing file raises an error naming it,
        where to put it and its URL. Every file's sha256 is checked before it is read.

    Returns
    -------
    The section as :func:`histoexpr.io.read_st` reads it: the image ``"he"``, the circles
    ``"spots"`` and the table ``"table"`` (spots x genes, raw counts).
    """
    from ..io import read_st

    section = _choice(section_id, _HER2ST_IMAGES, "section_id")
    files = [
        f"her2st/counts/{section}.tsv.gz",
        f"her2st/spots/{section}_selection.tsv",
        f"her2st/images/{_HER2ST_IMAGES[section]}",
    ]
    return read_st(*(fetch(name, download=download) for name in files))


def mob_st(section_id: Literal[1, 2, 3, 4] = 1, *, download: bool = True) -> SpatialData:
    """One section of the mouse olfactory bulb (legacy ST, 2k array) of the STUtility package.

    A low-resolution H&E (1,905 px square), counts of 1,000 genes (Ensembl ids), the alignment
    table that places the spots on the image; the spots under the tissue are kept. From the
    public repository ``jbergenstrahle/STUtility``.

    Parameters
    ----------
    section_id
        1, 2, 3 or 4.
    download
        Download missing files (see :func:`her2st`); ``False`` raises for a missing one.

    Returns
    -------
    The section as :func:`histoexpr.io.read_st` reads it (image ``"he"``, ``"spots"``,
    ``"table"``).
    """
    from ..io import read_st

    section = _choice(section_id, (1, 2, 3, 4), "section_id")
    files = [
        f"mob_st/MOB{section}.tsv.gz",
        f"mob_st/alignment_table_MOB{section}.tsv",
        f"mob_st/MOB{section}.jpg",
    ]
    return read_st(*(fetch(name, download=download) for name in files))


def merfish_mouse_brain(*, z: Literal[0, 1] = 0, download: bool = True) -> SpatialData:
    """A crop of the Vizgen MERFISH mouse brain receptor map (GiottoData's mini data set).

    The DAPI image of one focal plane (4,603 x 4,143 px at 0.108627 um/px), the 80,343 decoded
    transcripts of 559 genes and the cell boundaries of that plane, from the public repository
    ``josschavezf/GiottoData``. Read by :func:`histoexpr.io.read_transcripts` and
    :func:`histoexpr.io.read_cell_boundaries`.

    Parameters
    ----------
    z
        Focal plane, 0 or 1 (its DAPI image and cell boundaries).
    download
        Download missing files (see :func:`her2st`); ``False`` raises for a missing one.

    Returns
    -------
    A SpatialData with the image ``"dapi"``, the points ``"transcripts"`` (in the image, um) and
    the shapes ``"cells"``.
    """
    from ..io import read_cell_boundaries, read_transcripts

    z = _choice(z, (0, 1), "z")
    transcripts = fetch("merfish_mouse_brain/vizgen_transcripts.csv.gz", download=download)
    image = fetch(f"merfish_mouse_brain/images/mini_dataset_dapi_z{z}.jpg", download=download)
    cells = fetch(f"merfish_mouse_brain/cell_boundaries/z{z}_polygons.gz", download=download)
    sdata = read_transcripts(
        transcripts,
        x="global_x",
        y="global_y",
        offset=MERFISH_OFFSET,
        image=image,
        image_mpp=MERFISH_MPP,
        outside="drop",
    )
    sdata.shapes["cells"] = read_cell_boundaries(cells, offset=MERFISH_OFFSET, flip_y=True)
    return sdata


def iss_mouse_ca1(*, download: bool = True) -> SpatialData:
    """In situ sequencing of the mouse hippocampus CA1 (Qian et al. 2020, the pciSeq example).

    72,336 decoded reads of 92 genes (the few at ``x = -1`` are dropped) and the nucleus label
    image (5,471 x 7,602 px, 3,481 nuclei), on one pixel grid (coordinates in pixels: a pixel
    size of 1). From the public repository ``acycliq/pciSeq``.

    Parameters
    ----------
    download
        Download missing files (see :func:`her2st`); ``False`` raises for a missing one.

    Returns
    -------
    A SpatialData with the points ``"transcripts"`` and the labels ``"nuclei"``.
    """
    import pandas as pd

    from ..io import read_transcripts

    reads = pd.read_csv(fetch("iss_mouse_ca1/spots.csv", download=download))
    reads = reads[(reads["x"] >= 0) & (reads["y"] >= 0)]
    labels = fetch("iss_mouse_ca1/label_image.coo.npz", download=download)
    return read_transcripts(reads, gene="Gene", labels=labels, outside="drop")


def example_slide(
    name: Literal["CMU-1-Small-Region", "test3-DAPI-2-387"] = "CMU-1-Small-Region",
    *,
    download: bool = True,
) -> SpatialData:
    """A small whole-slide image: an Aperio SVS H&E or a Hamamatsu NDPI fluorescence pyramid.

    ``"CMU-1-Small-Region"``: 2,220 x 2,967 px H&E at 0.499 um/px, one level (OpenSlide test
    data, via ``Dana-Farber-AIOS/pathml``); ``"test3-DAPI-2-387"``: DAPI stored as RGB, 3,968 x
    4,864 px, 4 levels (``Booritas/slideio-tutorial``, CC-BY 4.0). Read lazily by
    :func:`histoexpr.io.read_wsi`.

    Parameters
    ----------
    name
        Which slide.
    download
        Download the file if missing (see :func:`her2st`); ``False`` raises instead.

    Returns
    -------
    A SpatialData with the image ``"he"``.
    """
    from ..io import read_wsi

    name = _choice(name, _SLIDES, "name")
    return read_wsi(fetch(_SLIDES[name], download=download))
