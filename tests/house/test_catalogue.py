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


def test_says_is_checked_against_the_message_raised():
    import pytest
    from _catalogue import bad_input, check_says, declared

    @bad_input("obscure error", "a test input", says="ValueError: the box ... lies outside 'he'",
               fix="another box")
    def raises_what_it_says():
        with pytest.raises(ValueError):
            raise ValueError("the box (0, 0, 5, 5) lies   outside 'he' (x 0..200)")

    @bad_input("obscure error", "a test input", says="ValueError: the box lies inside",
               fix="another box")
    def raises_something_else():
        with pytest.raises(ValueError):
            raise ValueError("the box (0, 0, 5, 5) lies outside 'he'")

    @bad_input("obscure error", "a test input", says="KeyError: no such key", fix="another key")
    def raises_another_class():
        with pytest.raises(LookupError):
            raise IndexError("no such key")

    raises_what_it_says()
    with pytest.raises(AssertionError, match="says 'ValueError: the box lies inside'"):
        raises_something_else()
    with pytest.raises(AssertionError, match="caught IndexError: no such key"):
        raises_another_class()
    # a described answer is left to the test's own assertions
    assert declared("refuses: not a histoexpr slide store") is None
    check_says("refuses: anything", [])
    with pytest.raises(ValueError, match="does not match its own match="):
        bad_input("obscure error", "x", says="ValueError: abc", fix="y", match="xyz")


def test_every_quoted_error_is_checked():
    """Rows that quote an error or a warning are the ones whose text is checked at run time."""
    rows = collect()
    checked = [row for row in rows if row.checked]
    assert len(checked) >= 50
    for row in checked:
        assert row.says.split(":")[0].strip("`").endswith(("Error", "Warning", "Exception",
                                                             "Interrupt")), row.test
