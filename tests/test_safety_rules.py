"""Safety rules, closing gaps left by earlier sessions: a refused call writes nothing, reused
features say exactly how they were made, a user's copy of an element is the user's, and a
``save=`` into a missing folder fails before drawing.

Each test is one bad input of the catalogue (``docs/bad_inputs.md``).
"""

from __future__ import annotations

import numpy as np
import pytest
from _catalogue import bad_input

import histoexpr as hx


def _elements(sdata) -> dict[str, list[str]]:
    return {kind: sorted(getattr(sdata, kind)) for kind in ("images", "labels", "shapes",
                                                             "points", "tables")}


def _glass_with_a_speck():
    """Bright glass with noise and one small stained speck: tissue is found, but no tile on it."""
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel

    from histoexpr._elements import scale_to_global

    rng = np.random.default_rng(0)
    pixels = rng.integers(225, 250, (3, 600, 600)).astype(np.uint8)
    pixels[:, 10:90, 10:90] = np.array([200, 110, 180], dtype=np.uint8)[:, None, None]
    image = Image2DModel.parse(pixels, dims=("c", "y", "x"), transformations=scale_to_global(1.0))
    return SpatialData(images={"he": image})


# --- 1. a refused hx.pp.tile leaves no tissue map behind ----------------------------------------

@bad_input("data lost", "`hx.pp.tile` on an image with (almost) no tissue and no tissue map",
           says="ValueError: no tile has min_tissue of its area on tissue; the tissue map it "
                "detected on the way is removed again, so sdata is as before",
           fix="lower min_tissue or use smaller tiles")
@pytest.mark.filterwarnings("ignore:The tissue detected")
def test_tile_refusal_leaves_no_tissue_map():
    sdata = _glass_with_a_speck()
    before, attrs = _elements(sdata), dict(sdata.attrs)
    with pytest.raises(ValueError, match="min_tissue.*Lower min_tissue or use smaller tiles"):
        hx.pp.tile(sdata, "he", size_px=224)
    assert _elements(sdata) == before
    assert dict(sdata.attrs) == attrs
    # the same image with small enough tiles: the map is detected and kept with the tiles
    hx.pp.tile(sdata, "he", size_px=40)
    assert "he_tissue" in sdata.labels and len(sdata.shapes["he_tiles"]) >= 1
