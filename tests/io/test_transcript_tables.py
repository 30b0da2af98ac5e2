"""Transcript, boundary and ST counts tables as instruments and tools write them.

The tables are read whatever their separator (found from the header line, not the file's name)
or format (parquet, as Xenium writes ``transcripts.parquet`` and ``cell_boundaries.parquet``);
a cell of several rings becomes a MultiPolygon, and invalid polygons are repaired and counted;
the spot names of legacy ST tables written by R (``X12x7``) or with decimal coordinates
(``5.003x2.987``) and lines ending in a tab are read as the spots they name.
"""

from __future__ import annotations

import gzip
import logging

import numpy as np
import pandas as pd
import pytest
from _catalogue import bad_input

import histoexpr as hx

TABLE = pd.DataFrame({"x": [1.5, 2.5, 3.5, 4.5], "y": [1.0, 2.0, 3.0, 4.0],
                      "gene": ["Actb", "ACTB", "actb", "Gfap"], "qv": [30.0, 12.0, 40.0, 22.0]})


def _write(path, text: str) -> None:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as handle:
            handle.write(text.encode("utf-8"))
    else:
        path.write_bytes(text.encode("utf-8"))


@bad_input("obscure error", "`hx.io.read_transcripts('tx.csv')` of a tab-separated table named "
           "`.csv`, a comma-separated `.txt`, a `;`-separated table with decimal commas, or a "
           "parquet file (Xenium's `transcripts.parquet`)",
           says="reads it: the separator from the header line, parquet by its first bytes "
                "(before: KeyError: no column(s) ['x', 'y', 'gene']; UnicodeDecodeError for "
                "parquet)",
           fix="nothing: the table is read as written")
@pytest.mark.parametrize("name", ["tab_named.csv", "comma_named.txt", "semicolon.csv",
                                  "tab.tsv.gz", "plain.csv.gz", "table.parquet", "bom_crlf.csv"])
def test_transcript_tables_of_any_separator_are_read(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".parquet"):
        TABLE.to_parquet(path)
    elif name.startswith("semicolon"):
        _write(path, TABLE.to_csv(index=False, sep=";", decimal=","))
    elif name.startswith("tab"):
        _write(path, TABLE.to_csv(index=False, sep="\t"))
    elif name.startswith("bom"):
        _write(path, "\ufeff" + TABLE.to_csv(index=False).replace("\n", "\r\n"))
    else:
        _write(path, TABLE.to_csv(index=False))
    points = hx.io.read_transcripts(path).points["transcripts"].compute()
    np.testing.assert_array_equal(points["x"], TABLE["x"])
    np.testing.assert_array_equal(points["y"], TABLE["y"])
    assert points["gene"].astype(str).tolist() == TABLE["gene"].tolist()
    np.testing.assert_array_equal(points["qv"], TABLE["qv"])  # the other columns kept


def test_xenium_transcripts_parquet_with_bytes_names(tmp_path):
    """Older Xenium files store feature_name and cell_id as bytes: decoded as text."""
    frame = pd.DataFrame({"x_location": [1.0, 2.0], "y_location": [3.0, 4.0],
                          "feature_name": [b"EPCAM", b"NegControlProbe_00001"],
                          "cell_id": [b"aaa-1", b"UNASSIGNED"]})
    frame.to_parquet(tmp_path / "transcripts.parquet")
    sdata = hx.io.read_transcripts(tmp_path / "transcripts.parquet", x="x_location",
                                   y="y_location", gene="feature_name")
    points = sdata.points["transcripts"].compute()
    # read_transcripts keeps every row as written: the controls are the platform readers' job
    assert list(points["gene"].cat.categories) == ["EPCAM", "NegControlProbe_00001"]
    np.testing.assert_array_equal(points[["x", "y"]].to_numpy(), [[1.0, 3.0], [2.0, 4.0]])


def test_parquet_tables_are_estimated_before_they_are_read(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    n = 60_000
    frame = pd.DataFrame({"x": rng.uniform(0, 500, n), "y": rng.uniform(0, 500, n),
                          "gene": rng.choice([f"G{i}" for i in range(50)], n)})
    frame.to_parquet(tmp_path / "tx.parquet")

    def not_read(*args, **kwargs):
        raise AssertionError("the table was read")

    with monkeypatch.context() as patch:
        patch.setattr(pd, "read_parquet", not_read)
        hx.settings.max_memory = "2 MiB"  # 60,000 rows of 24 B as pandas holds them, times 6
        with pytest.raises(MemoryError, match=r"Reading the transcript table tx\.parquet "
                           r"\(60,000 rows\) would allocate .*pandas\.read_parquet\(path, "
                           r"columns=\['x', 'y', 'gene'\]\)"):
            hx.io.read_transcripts(tmp_path / "tx.parquet")
    hx.settings.max_memory = None
    points = hx.io.read_transcripts(tmp_path / "tx.parquet").points["transcripts"].compute()
    np.testing.assert_array_equal(points["x"], frame["x"])


# ----------------------------------------------------------------------------- boundaries


def _square(x0: float, y0: float, side: float = 1.0, closed: bool = True) -> list:
    ring = [(x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side)]
    return ring + [ring[0]] if closed else ring


@bad_input("silently wrong", "`hx.io.read_cell_boundaries` of a table where one cell id holds "
           "several rings (the nuclei of a multinucleate cell in Xenium's "
           "`nucleus_boundaries.parquet`; one ring per z plane)",
           says="each ring that returns to its first vertex is a part of the cell's MultiPolygon "
                "(before: the rings joined into one self-intersecting polygon)",
           fix="nothing: the rings are read apart")
def test_cells_of_several_rings_are_multipolygons(tmp_path, caplog):
    rows = [("c1", x, y) for x, y in _square(0, 0) + _square(5, 5)]
    rows += [("c2", x, y) for x, y in _square(10, 0, side=2.0)]
    frame = pd.DataFrame(rows, columns=["cell_id", "vertex_x", "vertex_y"])
    frame["cell_id"] = frame["cell_id"].str.encode("utf-8")  # older Xenium: bytes
    frame.to_parquet(tmp_path / "nucleus_boundaries.parquet")
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        shapes = hx.io.read_cell_boundaries(tmp_path / "nucleus_boundaries.parquet",
                                            x="vertex_x", y="vertex_y", cell="cell_id")
    assert list(shapes.index) == ["c1", "c2"]
    assert list(shapes.geometry.geom_type) == ["MultiPolygon", "Polygon"]
    assert shapes.geometry.is_valid.all()
    np.testing.assert_allclose(shapes.geometry.area, [2.0, 4.0])  # two unit squares; 2 x 2
    assert len(shapes.geometry.iloc[0].geoms) == 2
    assert "Read 2 cell polygons (1 of several rings)" in caplog.text
    assert "invalid" not in caplog.text


@bad_input("silently wrong", "`hx.io.read_cell_boundaries` of polygons whose ring crosses itself "
           "(21 of the 498 Vizgen cells of the MERFISH example)",
           says="log: `... of ... cell polygons were invalid ...; repaired with "
                "shapely.make_valid(method='structure')` (before: invalid polygons, no word)",
           fix="nothing: they are repaired (their area kept); check the segmentation if many")
def test_invalid_polygons_are_repaired_and_counted(caplog):
    bow_tie = [(0, 0), (2, 2), (2, 0), (0, 2)]  # crosses itself at (1, 1)
    rows = [("bow", x, y) for x, y in bow_tie] + [("ok", x, y) for x, y in _square(5, 5)]
    frame = pd.DataFrame(rows, columns=["poly_ID", "x", "y"])
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        shapes = hx.io.read_cell_boundaries(frame)
    assert shapes.geometry.is_valid.all()
    np.testing.assert_allclose(shapes.geometry.area, [2.0, 1.0])  # the two triangles kept
    assert ("1 of 2 cell polygons were invalid (a ring crossing itself, or overlapping rings of "
            "one cell); repaired with shapely.make_valid(method='structure')") in caplog.text


@pytest.mark.realdata
def test_vizgen_polygons_are_all_valid(data_dir, caplog):
    path = data_dir / "merfish_mouse_brain" / "cell_boundaries" / "z0_polygons.gz"
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        shapes = hx.io.read_cell_boundaries(path, offset=(6400.029, 4699.967), flip_y=True)
    assert len(shapes) == 498 and shapes.geometry.is_valid.all()
    assert "21 of 498 cell polygons were invalid" in caplog.text
    # every cell keeps the area its ring encloses (the repaired ones to 1 %)
    from shapely import Polygon

    raw = pd.read_csv(path, dtype={"poly_ID": str})
    for cell, vertices in raw.groupby("poly_ID"):
        ring = Polygon(np.column_stack([vertices["x"], -vertices["y"]]))
        assert shapes.geometry.loc[cell].area == pytest.approx(abs(ring.area), rel=0.01)


# ----------------------------------------------------------------------------- ST counts


def _counts_text(spots: list[str], genes: list[str], values: np.ndarray, *, genes_as_rows=False,
                 trailing_tab=False) -> str:
    frame = pd.DataFrame(values, index=spots, columns=genes)
    text = (frame.T if genes_as_rows else frame).to_csv(sep="\t")
    if trailing_tab:
        text = "\n".join(line + "\t" if line else line for line in text.split("\n"))
    return text


@bad_input("obscure error", "a legacy ST counts table written by R with genes as rows (spot "
           "columns `X12x7`), or whose spots are named by decimal coordinates (`5.003x2.987`, "
           "the Stahl 2016 / SpatialDE tables)",
           says="reads the spots as '12x7' (R's X dropped; decimals rounded to the array spot, "
                "logged) (before: ValueError: no spots named like '12x7')",
           fix="nothing; pass the spot file whose x, y are the array coordinates")
def test_st_spot_names_from_r_and_decimal_coordinates(tmp_path, caplog):
    from histoexpr.io._st import _read_counts

    values = np.arange(12.0).reshape(4, 3)
    genes = ["A", "B", "C"]
    r_path, decimal_path = tmp_path / "r.tsv", tmp_path / "decimal.tsv.gz"
    _write(r_path, _counts_text(["X5x3", "X6x3", "X5x4", "X6x4"], genes, values,
                                genes_as_rows=True))
    _write(decimal_path, _counts_text(["5.003x2.987", "5.997x3.01", "4.991x3.993", "6.02x4.0"],
                                      genes, values))
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        from_r = _read_counts(r_path)
        from_decimals = _read_counts(decimal_path)
    for table in (from_r, from_decimals):
        assert list(table.index) == ["5x3", "6x3", "5x4", "6x4"]
        assert list(table.columns) == genes
        np.testing.assert_array_equal(table.to_numpy(), values)
    assert "named by decimal array coordinates (e.g. '5.003x2.987')" in caplog.text
    assert "rounding them ('5x3')" in caplog.text
    # two spots that round to one array spot cannot be matched: refused, not mixed
    _write(decimal_path, _counts_text(["5.003x2.987", "4.9x3.1", "4.991x3.993", "6.02x4.0"],
                                      genes, values))
    with pytest.raises(ValueError, match=r"gives one spot twice \(e\.g\. '5x3'\)"):
        _read_counts(decimal_path)


@bad_input("obscure error", "a legacy ST counts table whose lines end with a tab",
           says="log: `Dropped 1 empty, unnamed column(s) of counts.tsv (a separator at the end "
                "of each line)` (before: ValueError: NaN counts)",
           fix="nothing: the empty column is dropped")
@pytest.mark.parametrize("genes_as_rows", [False, True])
def test_st_counts_with_a_trailing_tab(tmp_path, caplog, genes_as_rows):
    from histoexpr.io._st import _read_counts

    values = np.arange(6.0).reshape(2, 3)
    path = tmp_path / "counts.tsv"
    _write(path, _counts_text(["5x3", "6x3"], ["A", "B", "C"], values,
                              genes_as_rows=genes_as_rows, trailing_tab=True))
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        table = _read_counts(path)
    assert list(table.index) == ["5x3", "6x3"] and list(table.columns) == ["A", "B", "C"]
    np.testing.assert_array_equal(table.to_numpy(), values)
    assert "Dropped 1 empty, unnamed column(s) of counts.tsv" in caplog.text


def test_read_st_joins_decimal_spot_names_to_the_spot_file(tmp_path):
    from PIL import Image

    xs, ys = np.meshgrid(np.arange(5, 9), np.arange(3, 7))
    xs, ys = xs.ravel(), ys.ravel()
    rng = np.random.default_rng(0)
    new_x, new_y = xs + rng.normal(0, 0.02, xs.size), ys + rng.normal(0, 0.02, ys.size)
    spots = pd.DataFrame({"x": xs, "y": ys, "new_x": new_x.round(3), "new_y": new_y.round(3),
                          "pixel_x": (new_x - 4) * 100, "pixel_y": (new_y - 2) * 100})
    spots.to_csv(tmp_path / "spots.tsv", sep="\t", index=False)
    values = rng.integers(0, 9, (xs.size, 3)).astype(float)
    names = [f"{a:.3f}x{b:.3f}" for a, b in zip(new_x, new_y, strict=True)]
    _write(tmp_path / "counts.tsv", _counts_text(names, ["A", "B", "C"], values))
    Image.fromarray(np.full((700, 700, 3), 200, np.uint8)).save(tmp_path / "he.jpg")
    sdata = hx.io.read_st(tmp_path / "counts.tsv", tmp_path / "spots.tsv", tmp_path / "he.jpg",
                          mpp=2.0)
    table = sdata.tables["table"]
    expected = pd.DataFrame(values, index=[f"{a}x{b}" for a, b in zip(xs, ys, strict=True)])
    assert table.n_obs == xs.size
    np.testing.assert_array_equal(table.X.toarray(), expected.loc[table.obs_names].to_numpy())
    np.testing.assert_array_equal(table.obs["array_x"], [int(s.split("x")[0])
                                                          for s in table.obs_names])
