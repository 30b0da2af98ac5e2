"""The bad-input catalogue page is the one written from the tests (see ``tests/_catalogue.py``)."""

from __future__ import annotations

from _catalogue import KINDS, PAGE, collect, render


def test_catalogue_page_matches_the_tests():
    rows = collect()
    assert PAGE.read_text() == render(rows), (
        "docs/bad_inputs.md differs from the tests' @bad_input rows: "
        "run `python tests/_catalogue.py --write`")


def test_every_row_names_a_known_kind_and_a_fix():
    for row in collect():
        assert row.kind in KINDS
        assert row.says.strip() and row.fix.strip(), row.test
