"""The files of a synthetic slide cohort are replaced only as the generator left them."""

from __future__ import annotations

import shutil

import anndata as ad
import pytest
from _catalogue import bad_input
from conftest import tree_digest

import histoexpr as hx


@bad_input("data lost", "`hx.datasets.synthetic_slide_cohort(folder, overwrite=True)` where the "
           "user had annotated the cohort's `bulk.h5ad` and saved it (or copied it into "
           "another cohort's folder): its mark travelled with it, so it was replaced",
           says="FileExistsError: .../bulk.h5ad is a file that hx.datasets."
           "synthetic_slide_cohort wrote, but it changed since histoexpr wrote it",
           fix="choose another folder, or move the file away yourself")
def test_a_bulk_table_saved_again_by_the_user_is_not_replaced(tmp_path):
    folder = tmp_path / "cohort"
    hx.datasets.synthetic_slide_cohort(folder, 2, seed=0, size_um=100, mpp=1.0)
    # as the generator left it: replaced
    hx.datasets.synthetic_slide_cohort(folder, 2, seed=1, size_um=100, mpp=1.0, overwrite=True)
    bulk = ad.read_h5ad(folder / "bulk.h5ad")
    bulk.obs["my_grade"] = ["G1", "G3"]
    bulk.write_h5ad(folder / "bulk.h5ad")  # the user's annotations, its mark still inside
    before = tree_digest(folder)
    with pytest.raises(FileExistsError, match="bulk.h5ad is a file that"):
        hx.datasets.synthetic_slide_cohort(folder, 2, seed=2, size_um=100, mpp=1.0,
                                           overwrite=True)
    assert tree_digest(folder) == before
    # a copy into another folder is not that folder's generator's file either
    other = tmp_path / "other"
    hx.datasets.synthetic_slide_cohort(other, 2, seed=0, size_um=100, mpp=1.0)
    shutil.copy2(folder / "bulk.h5ad", other / "bulk.h5ad")
    before = tree_digest(other)
    with pytest.raises(FileExistsError, match="bulk.h5ad is a file that"):
        hx.datasets.synthetic_slide_cohort(other, 2, seed=2, size_um=100, mpp=1.0,
                                           overwrite=True)
    assert tree_digest(other) == before
    assert "my_grade" in ad.read_h5ad(other / "bulk.h5ad").obs
