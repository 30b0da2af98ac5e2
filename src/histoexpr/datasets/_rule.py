"""The generative rule of the synthetic data: cell types, their morphology and their programmes.

Everything here is a fixed constant (nothing is drawn at random), so the rule is the same for
every seed and can be written down in the docstrings and stored with each section.
"""

from __future__ import annotations

import numpy as np

CELL_TYPES = ("tumour", "stroma", "lymphocyte", "epithelium")

#: Morphology per cell type.
#:
#: ``radius_um``: equivalent radius of the nucleus (area = pi r^2) before occlusion;
#: ``elongation``: ratio of the long to the short axis; ``irregularity``: relative amplitude of
#: the outline's wobble; ``spacing_um``: lattice spacing of the nuclei in a region of the type
#: (smaller = denser); ``haematoxylin`` / ``eosin``: optical densities of the nucleus and of the
#: surrounding cytoplasm / matrix; ``dapi``: brightness of the nucleus in the DAPI image (0-1).
MORPHOLOGY: dict[str, dict[str, float]] = {
    "tumour": {"radius_um": 4.6, "elongation": 1.35, "irregularity": 0.18, "spacing_um": 12.0,
               "haematoxylin": 1.05, "eosin": 0.25, "dapi": 0.75},
    "stroma": {"radius_um": 2.9, "elongation": 3.2, "irregularity": 0.04, "spacing_um": 20.0,
               "haematoxylin": 0.80, "eosin": 0.45, "dapi": 0.55},
    "lymphocyte": {"radius_um": 2.4, "elongation": 1.05, "irregularity": 0.03, "spacing_um": 7.5,
                   "haematoxylin": 1.35, "eosin": 0.12, "dapi": 0.95},
    "epithelium": {"radius_um": 3.6, "elongation": 1.15, "irregularity": 0.04, "spacing_um": 12.5,
                   "haematoxylin": 0.60, "eosin": 0.30, "dapi": 0.45},
}

#: Off-diagonal mixing preferences: where a region's non-dominant cells come from. Rows are the
#: region's dominant type, values the relative share of each other type among its mixed-in cells
#: (each row sums to 1). Tumour cells never appear outside tumour regions.
MIXING_TARGETS: dict[str, dict[str, float]] = {
    "tumour": {"stroma": 0.4, "lymphocyte": 0.6},
    "stroma": {"lymphocyte": 1.0},
    "lymphocyte": {"stroma": 1.0},
    "epithelium": {"stroma": 0.4, "lymphocyte": 0.6},
}

#: Area share of each region type in the tissue of a default section.
DEFAULT_PROPORTIONS = {"tumour": 0.3, "stroma": 0.3, "lymphocyte": 0.15, "epithelium": 0.25}

MARKERS: dict[str, tuple[str, ...]] = {
    "tumour": ("EPCAM", "KRT8", "KRT18", "CEACAM5", "ERBB2", "MYC", "CCND1", "SOX9"),
    "stroma": ("COL1A1", "COL1A2", "COL3A1", "DCN", "LUM", "SPARC", "ACTA2", "PDGFRB"),
    "lymphocyte": ("PTPRC", "CD3E", "CD3D", "CD2", "CD8A", "MS4A1", "CD79A", "CCL5"),
    "epithelium": ("CDH1", "KRT19", "KRT5", "PIGR", "TFF3", "MUC2", "CA2", "AQP8"),
}
MARKER_LEVELS = (6.0, 5.0, 4.0, 4.0, 3.0, 3.0, 2.0, 2.0)
#: Genes whose expression grows with nucleus area (within a type): proliferation.
AREA_GENES = ("MKI67", "TOP2A", "CCNB1", "PCNA")
#: Genes whose expression grows with local cell density (within a type): hypoxia.
DENSITY_GENES = ("VEGFA", "CA9", "SLC2A1", "NDRG1")
HOUSEKEEPING = ("ACTB", "GAPDH", "B2M", "RPLP0", "EEF1A1", "TPT1")
#: Exponents of the continuous links: expression ~ (area / mean area of the type) ** AREA_SLOPE.
AREA_SLOPE = 1.5
DENSITY_SLOPE = 1.0
#: Background level of a gene in a type that does not express it (mean counts per cell).
BASE_LEVEL = 0.1
#: Negative-binomial dispersion (variance = mu + mu^2 / DISPERSION) and library-size spread.
DISPERSION = 5.0
LIBRARY_SD = 0.25

GENES: tuple[str, ...] = (
    *(g for t in CELL_TYPES for g in MARKERS[t]), *AREA_GENES, *DENSITY_GENES, *HOUSEKEEPING
)


def programme() -> np.ndarray:
    """Mean counts per cell (types x genes): the expected mean of each gene over a type's cells."""
    index = {g: j for j, g in enumerate(GENES)}
    prog = np.full((len(CELL_TYPES), len(GENES)), BASE_LEVEL)
    for i, cell_type in enumerate(CELL_TYPES):
        for gene, level in zip(MARKERS[cell_type], MARKER_LEVELS, strict=True):
            prog[i, index[gene]] = level
    t, s, ly, ep = range(4)
    # shared epithelial genes: normal glands carry some tumour keratins and vice versa
    for gene, level in (("EPCAM", 2.0), ("KRT8", 2.0), ("KRT18", 1.5)):
        prog[ep, index[gene]] = level
    for gene, level in (("CDH1", 1.0), ("KRT19", 2.0)):
        prog[t, index[gene]] = level
    for gene, levels in {
        "MKI67": (2.5, 0.2, 0.6, 0.4), "TOP2A": (2.0, 0.2, 0.5, 0.3),
        "CCNB1": (1.5, 0.2, 0.4, 0.3), "PCNA": (3.0, 0.5, 1.0, 0.8),
        "VEGFA": (2.0, 0.6, 0.3, 0.5), "CA9": (1.5, 0.1, 0.1, 0.2),
        "SLC2A1": (1.5, 0.3, 0.4, 0.4), "NDRG1": (2.0, 0.5, 0.3, 0.6),
        "ACTB": (8.0, 8.0, 6.0, 7.0), "GAPDH": (6.0, 4.0, 3.0, 4.0),
        "B2M": (3.0, 4.0, 10.0, 4.0), "RPLP0": (5.0, 4.0, 5.0, 4.0),
        "EEF1A1": (8.0, 6.0, 9.0, 7.0), "TPT1": (5.0, 4.0, 6.0, 5.0),
    }.items():
        prog[:, index[gene]] = levels
    return prog


def mixing_matrix(mixing: float) -> np.ndarray:
    """Probability (regions x cell types) that a cell in a region of one type is of each type."""
    n = len(CELL_TYPES)
    matrix = np.eye(n) * (1.0 - mixing)
    for i, region in enumerate(CELL_TYPES):
        for target, share in MIXING_TARGETS[region].items():
            matrix[i, CELL_TYPES.index(target)] += mixing * share
    return matrix


def rule_dict(*, mixing: float, proportions: dict[str, float]) -> dict:
    """The rule as plain JSON-able python objects (stored in ``sdata.attrs["synthetic"]``)."""
    prog = programme()
    return {
        "cell_types": list(CELL_TYPES),
        "genes": list(GENES),
        "programme": {t: {g: float(prog[i, j]) for j, g in enumerate(GENES)}
                      for i, t in enumerate(CELL_TYPES)},
        "morphology": {t: {k: float(v) for k, v in MORPHOLOGY[t].items()} for t in CELL_TYPES},
        "markers": {t: list(MARKERS[t]) for t in CELL_TYPES},
        "area_genes": list(AREA_GENES),
        "area_slope": AREA_SLOPE,
        "density_genes": list(DENSITY_GENES),
        "density_slope": DENSITY_SLOPE,
        "housekeeping": list(HOUSEKEEPING),
        "dispersion": DISPERSION,
        "library_sd": LIBRARY_SD,
        "mixing": float(mixing),
        "mixing_matrix": {r: {t: float(v) for t, v in zip(CELL_TYPES, row, strict=True)}
                          for r, row in zip(CELL_TYPES, mixing_matrix(mixing), strict=True)},
        "proportions": {t: float(proportions[t]) for t in CELL_TYPES},
    }
