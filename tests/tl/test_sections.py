"""One rule turns what a tl step was given into sections by name."""

from __future__ import annotations

import pytest
from spatialdata import SpatialData

from histoexpr.tl._sections import as_sections


def test_one_naming_rule_for_sections_without_names():
    a, b = SpatialData(), SpatialData()
    assert list(as_sections(a)) == ["section_0"]
    assert as_sections([a, b]) == {"section_0": a, "section_1": b}
    assert as_sections((a, b))["section_1"] is b
    assert as_sections({"left": a, 3: b}) == {"left": a, "3": b}


def test_other_inputs_are_refused_naming_what_is_accepted():
    with pytest.raises(TypeError, match="No section given.*a SpatialData"):
        as_sections([])
    with pytest.raises(TypeError, match="Section 'section_1' is a str.*a SpatialData, a "
                                        "non-empty list"):
        as_sections([SpatialData(), "b.zarr"])
    with pytest.raises(TypeError, match="Expected a SpatialData.*got a str"):
        as_sections("b.zarr")
