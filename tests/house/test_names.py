"""One name per idea: no public parameter uses a forbidden synonym (see tests/_names.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _names import ALLOWED, CONVENTIONS, FORBIDDEN, parameters, public_callables

DESIGN = Path(__file__).resolve().parents[2] / "docs" / "design.md"


def test_no_public_parameter_uses_a_forbidden_synonym():
    found = [(qualname, name) for qualname, obj in public_callables()
             for name in parameters(obj) if name in FORBIDDEN]
    wrong = [f"{qualname}({name}=...): use {FORBIDDEN[name]!r}" for qualname, name in found
             if (qualname, name) not in ALLOWED]
    assert not wrong, "Names off the conventions (docs/design.md, Names):\n" + "\n".join(wrong)
    # an allow-list entry whose parameter was renamed must go, so the list only shrinks
    stale = sorted(set(ALLOWED) - set(found))
    assert not stale, f"Remove these entries from tests/_names.py ALLOWED: {stale}"


def test_every_deprecated_name_is_a_forbidden_synonym_of_its_new_name():
    shims = {qualname: obj.__renamed_parameters__ for qualname, obj in public_callables()
             if hasattr(obj, "__renamed_parameters__")}
    assert "pp.tile" in shims  # the shim is found where it is used
    for qualname, renames in shims.items():
        for old, new in renames.items():
            assert old in FORBIDDEN, f"{qualname}: deprecated {old!r} is not on the forbidden list"
            assert old not in parameters(dict(public_callables())[qualname])
            if isinstance(new, str):
                assert new in parameters(dict(public_callables())[qualname])


def _names_table() -> str:
    text = DESIGN.read_text()
    match = re.search(r"^### Names\n(.*?)(?=^#|\Z)", text, re.S | re.M)
    assert match, "docs/design.md has no '### Names' section"
    return match.group(1)


@pytest.mark.parametrize("convention", CONVENTIONS, ids=lambda c: c["name"])
def test_design_doc_table_matches_the_synonym_table(convention):
    rows = [line for line in _names_table().splitlines() if line.startswith("|")]
    row = next((r for r in rows if f"`{convention['name']}`" in r.split("|")[2]), None)
    assert row is not None, f"docs/design.md Names table has no row for {convention['name']!r}"
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == convention["idea"]
    documented = set(re.findall(r"`([^`]+)`", cells[4]))
    assert documented == set(convention["synonyms"]), (convention["name"], documented)


def test_design_doc_table_has_no_row_the_synonym_table_lacks():
    rows = [line for line in _names_table().splitlines()
            if line.startswith("|") and not set(line) <= set("|- ")][1:]
    assert len(rows) == len(CONVENTIONS)
