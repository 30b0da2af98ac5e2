"""Element names: SpatialData's rule, checked before any work, with the parameter and a fix."""

from __future__ import annotations

import sys

import pytest

from histoexpr._core.validate import check_element_name


@pytest.mark.parametrize("internal", [True, False])
def test_element_names_follow_spatialdatas_rule(monkeypatch, internal):
    if not internal:  # a spatialdata without that internal module: the rule as of 0.7
        monkeypatch.setitem(sys.modules, "spatialdata._core.validation", None)
    assert check_element_name("key_added", "he_tiles-2.v1") == "he_tiles-2.v1"
    for bad in ("a/b", "a+b", "", ".", "..", "__private", "a b"):
        with pytest.raises(ValueError, match=r"key_added=.* cannot name an element.*e\.g\. "
                                             r"key_added="):
            check_element_name("key_added", bad)
    with pytest.raises(TypeError, match="must be a string"):
        check_element_name("key_added", 3)
