"""What a new user's first spot tables do in pp: select_genes names the table to pass and the
package a flavour needs.
"""

from __future__ import annotations

import pytest
from _catalogue import bad_input

import histoexpr as hx


@bad_input("obscure error", "`hx.pp.select_genes(sdata, n_top=50)` (the SpatialData, as the "
           "other pp steps take it, instead of its spot table)",
           says="TypeError: select_genes takes spot tables (AnnData), got SpatialData. Pass the "
                "section's spot table, e.g. hx.pp.select_genes(sdata.tables['table'], ...) "
                "(before: KeyError: 'Could not find element with name 0')",
           fix="pass sdata.tables['table'] (or a list of spot tables)")
def test_select_genes_names_the_spot_table(two_sections):
    section = two_sections["a"]
    with pytest.raises(TypeError, match=r"got SpatialData.*sdata.tables\['table'\]"):
        hx.pp.select_genes(section, n_top=3)
    with pytest.raises(TypeError, match=r"got SpatialData"):
        hx.pp.select_genes(list(two_sections.values()), n_top=3)
    table = section.tables["table"]
    assert len(hx.pp.select_genes(table, n_top=3)) == 3


def test_seurat_v3_without_scikit_misc_names_the_package(two_sections):
    import importlib.util

    if importlib.util.find_spec("skmisc") is not None:
        pytest.skip("scikit-misc is installed: flavor='seurat_v3' works")
    with pytest.raises(ImportError, match=r"needs the package scikit-misc.*"
                                          r"flavor='pearson_residuals'"):
        hx.pp.select_genes(two_sections["a"].tables["table"], n_top=3, flavor="seurat_v3")
