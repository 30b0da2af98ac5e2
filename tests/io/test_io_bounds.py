"""Bounded work, isolated faults, scales stated in io: bad inputs refused before work is spent.

Each test is the check of one bad input of the catalogue (``docs/bad_inputs.md``): memory
estimated before it is spent, one bad slide not stopping a cohort, slides identified by their
content, pixel sizes never assumed, identifiers kept as written. The same checks of the other
rooms: tests/pp/test_pp_bounds.py, tests/tl/test_tl_bounds.py, tests/pl/test_pl_bounds.py,
tests/house/test_cli_bounds.py.
"""

from __future__ import annotations

import re
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from _catalogue import bad_input

import histoexpr as hx

SLIDE_OPTIONS = {"encoder": "handcrafted", "size_px": 16, "mpp": 2.0}


def _cohort_files(folder, n=3, compression="none"):
    """``n`` small slide files (1 um/px, 200 um), their manifest; stores beside them."""
    manifest = hx.datasets.synthetic_slide_cohort(folder, n, seed=0, size_um=200, mpp=1.0,
                                                  compression=compression)
    return manifest


def _read(manifest, folder):
    return hx.io.read_cohort(manifest, store_dir=folder / "stores")


# --- manifests ----------------------------------------------------------------------------------

@bad_input("silently wrong", "a manifest whose slide ids look like numbers (`001`, `002`)",
           says="nothing: the ids stay `001`, `002` as written (read as text)",
           fix="nothing to do")
def test_manifest_ids_stay_as_written(tmp_path):
    manifest = _cohort_files(tmp_path, 2)
    frame = pd.read_csv(manifest)
    frame["slide_id"] = ["001", "002"]
    frame["patient"] = ["007", "007"]
    frame.to_csv(manifest, index=False)
    cohort = _read(manifest, tmp_path)
    assert cohort.ids == ["001", "002"]
    assert list(cohort.bulk.obs["patient"]) == ["007", "007"]
    assert cohort.store("001").path.name == "001.zarr"


@bad_input("silently wrong", "a manifest naming the same slide file twice under two slide ids",
           says="ValueError: `The manifest names the same slide file more than once (... as "
                "['a', 'b'])`",
           fix="keep one row per slide file")
def test_manifest_naming_a_file_twice(tmp_path):
    manifest = _cohort_files(tmp_path, 2)
    frame = pd.read_csv(manifest)
    frame["path"] = [frame["path"][0], "./" + frame["path"][0]]
    frame["slide_id"] = ["a", "b"]
    frame.to_csv(manifest, index=False)
    with pytest.raises(ValueError, match=r"same slide file more than once.*\['a', 'b'\]"):
        _read(manifest, tmp_path)


@bad_input("data lost", "a manifest whose slide ids differ only in case (`S1` and `s1`) or "
           "in how a letter is encoded (`café` as one character or as `e` + accent)",
           says="ValueError: `The manifest has slide ids that differ only in case or in how "
                "their letters are encoded ([['S1', 's1']]): their stores would be one folder "
                "on a case-insensitive or normalising file system` (before: accepted; on macOS "
                "and Windows one slide's results overwrote the other's); an id written as "
                "`e` + accent: `... is not in Unicode's composed form (NFC)`",
           fix="make the slide ids differ in more than case; write accented letters composed")
def test_manifest_ids_differing_only_in_case(tmp_path):
    manifest = _cohort_files(tmp_path, 2)
    frame = pd.read_csv(manifest)
    frame["slide_id"] = ["S1", "s1"]
    frame.to_csv(manifest, index=False)
    with pytest.raises(ValueError, match=r"differ only in case or in how their letters are "
                       r"encoded \(\[\['S1', 's1'\]\]\)"):
        _read(manifest, tmp_path)
    # 'e' + accent is refused as a name on its own: only the composed form names a store
    frame["slide_id"] = ["caf\u00e9", "cafe\u0301"]
    frame.to_csv(manifest, index=False)
    with pytest.raises(ValueError, match=r"slide_id='cafe\u0301' cannot name .*composed form "
                                         r"\(NFC\)"):
        _read(manifest, tmp_path)
    assert not (tmp_path / "stores").exists()


@bad_input("obscure error", "slide ids of the manifest that are too long to name a store "
           "beside its temporary names (e.g. 250 bytes)",
           says="ValueError: slide_id='sss...' cannot name a slide's store ... it is longer "
                "than 150 bytes (before: accepted, then each slide failed with 'File name too "
                "long' after it was tiled and embedded)",
           fix="use shorter slide ids (a slide_id column)")
def test_manifest_ids_too_long_for_a_store(tmp_path):
    manifest = _cohort_files(tmp_path, 2)
    frame = pd.read_csv(manifest)
    frame["slide_id"] = ["s" * 250, "t"]
    frame.to_csv(manifest, index=False)
    with pytest.raises(ValueError, match="it is longer than 150 bytes"):
        _read(manifest, tmp_path)
    frame["slide_id"] = ["s" * 150, "t"]  # the longest: its store and temporary names fit
    frame.to_csv(manifest, index=False)
    cohort = _read(manifest, tmp_path)
    from histoexpr._core.files import partial_path

    name = partial_path(cohort.store("s" * 150).path, "prediction-" + "k" * 150).name
    assert len(name.encode()) <= 255


def test_relative_manifest_and_store_dir_are_read_as_absolute(tmp_path, monkeypatch):
    manifest = _cohort_files(tmp_path, 2)
    monkeypatch.chdir(tmp_path)
    cohort = hx.io.read_cohort(manifest.name, store_dir="stores")
    monkeypatch.chdir(tmp_path.parent)  # a dask worker in another folder: the same files
    assert cohort.path("slide_00") == tmp_path / "slide_00.tif"
    assert cohort.store("slide_00").path == tmp_path / "stores" / "slide_00.zarr"


@bad_input("obscure error", "a manifest whose mpp column holds text (`0.5um`) or `inf`",
           says="ValueError: `The mpp of slide 'slide_00' is '0.5um'; give a positive pixel "
                "size in um/px (e.g. 0.5)` (before: could not convert string to float: "
                "'0.5um'; inf accepted)",
           fix="write the pixel size as a number in um/px, or leave the cell empty")
def test_manifest_mpp_that_is_not_a_pixel_size(tmp_path):
    manifest = _cohort_files(tmp_path, 2)
    frame = pd.read_csv(manifest)
    for value in ("0.5um", "inf"):
        frame["mpp"] = [value, "1.0"]
        frame.to_csv(manifest, index=False)
        with pytest.raises(ValueError, match=f"The mpp of slide 'slide_00' is '?{value}'?; give"):
            _read(manifest, tmp_path)
    frame["mpp"] = ["", "1.0"]
    frame.to_csv(manifest, index=False)
    assert _read(manifest, tmp_path).slide_mpp("slide_01") == 1.0


@bad_input("obscure error", "a manifest row whose path is a folder (a slide stored as a folder, "
           "or the manifest's own folder: `.`)",
           says="ValueError: `1 paths of the manifest are folders, not slide files` (before: "
                "'1 slide files of the manifest do not exist', for a path that exists)",
           fix="give each slide's file; convert a slide stored as a folder to OME-TIFF")
def test_manifest_path_that_is_a_folder(tmp_path):
    manifest = _cohort_files(tmp_path, 2)
    frame = pd.read_csv(manifest)
    frame["path"] = [frame["path"][0], "."]
    frame.to_csv(manifest, index=False)
    with pytest.raises(ValueError, match="1 paths of the manifest are folders, not slide files"):
        _read(manifest, tmp_path)


@bad_input("obscure error", "an empty manifest file (0 bytes)",
           says="ValueError: `The manifest 'slides.csv' is empty; write a header line ...`",
           fix="write a header with a 'path' column and one row per slide")
def test_empty_manifest_file(tmp_path):
    manifest = tmp_path / "slides.csv"
    manifest.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        hx.io.read_cohort(manifest)


@bad_input("obscure error", "`hx.io.read_cohort(manifest, bulk=...)` with a bulk file that is "
           "missing or not an .h5ad (a CSV), or a bulk AnnData with a slide id twice",
           says="ValueError: bulk='.../manifest.csv' cannot be read as an .h5ad file (OSError: "
                "...). Give the AnnData's .h5ad file (before: h5py's FileNotFoundError or "
                "OSError; pandas' InvalidIndexError for repeated ids)",
           fix="give the .h5ad file of the bulk expression, one row per slide")
def test_read_cohort_bulk_errors_name_the_argument(tmp_path):
    import anndata as ad
    from conftest import tree_digest

    manifest = _cohort_files(tmp_path, 2)
    bulk = ad.read_h5ad(tmp_path / "bulk.h5ad")
    before = tree_digest(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"The bulk expression \(bulk=\) file "
                                                r"'.*bluk\.h5ad' does not exist"):
        hx.io.read_cohort(manifest, bulk=tmp_path / "bluk.h5ad")
    with pytest.raises(ValueError, match=r"bulk='.*manifest\.csv' cannot be read as an \.h5ad "
                                         r"file \(OSError: .*\)\. Give the AnnData's \.h5ad"):
        hx.io.read_cohort(manifest, bulk=manifest)
    with pytest.raises(IsADirectoryError, match="bulk=.* is a folder"):
        hx.io.read_cohort(manifest, bulk=tmp_path)
    with warnings.catch_warnings():  # anndata warns of the repeated name
        warnings.simplefilter("ignore", UserWarning)
        twice = ad.concat([bulk, bulk[:1]])
    with pytest.raises(ValueError, match=r"bulk has 1 slide id\(s\) more than once in its "
                                         r"obs_names \(\['slide_00'\]\)"):
        hx.io.read_cohort(manifest, bulk=twice)
    assert tree_digest(tmp_path) == before
    assert hx.io.read_cohort(manifest, bulk=tmp_path / "bulk.h5ad").bulk.n_obs == 2


@bad_input("obscure error", "a manifest that is a malformed CSV (an unclosed quote) or a "
           "`.parquet` file that is not parquet (also through `histoexpr predict --manifest`)",
           says="ValueError: The manifest '.../broken.csv' cannot be read as a comma-separated "
                "(CSV) table (ParserError: ...) (before: pandas' ParserError or pyarrow's "
                "ArrowInvalid, naming no file)",
           fix="save the manifest again as a table with a 'path' column")
def test_read_cohort_unreadable_manifest_names_the_file(tmp_path):
    from conftest import tree_digest

    broken = tmp_path / "broken.csv"
    broken.write_text('path,slide_id\n"slide_00.tif,a\n')
    not_parquet = tmp_path / "slides.parquet"
    not_parquet.write_text("path\nslide_00.tif\n")
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("path\tsite\nslide_00.tif\tN\xeemes\n".encode("latin-1"))
    before = tree_digest(tmp_path)
    with pytest.raises(ValueError, match=r"The manifest '.*broken\.csv' cannot be read as a "
                                         r"comma-separated \(CSV\) table \(ParserError: "):
        hx.io.read_cohort(broken)
    with pytest.raises(ValueError, match=r"The manifest '.*slides\.parquet' is not a readable "
                                         r"parquet file \(ArrowInvalid: "):
        hx.io.read_cohort(not_parquet)
    with pytest.raises(ValueError, match=r"'.*latin\.tsv' cannot be read as a tab-separated "
                                         r"\(TSV\) table \(UnicodeDecodeError"):
        hx.io.read_cohort(latin)
    assert tree_digest(tmp_path) == before


# --- one bad slide ------------------------------------------------------------------------------

def _corrupt_first_tile(path):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\x00" * count)


def _blank_slide(path, size_px=200, mpp=1.0):
    import tifffile

    white = np.full((size_px, size_px, 3), 250, np.uint8)
    tifffile.imwrite(path, white, photometric="rgb", tile=(64, 64),
                     resolution=(1 / mpp, 1 / mpp), resolutionunit="MICROMETER")


@bad_input("obscure error", "a cohort where one slide is blank and one has a corrupt JPEG tile",
           says="the others are embedded; a warning names each failed slide and its error; "
                "the returned table has status 'failed' and the 'error'",
           fix="fix or replace those files and run embed_cohort again (only they are retried)")
def test_one_bad_slide_does_not_stop_the_cohort(tmp_path):
    manifest = _cohort_files(tmp_path, 4, compression="jpeg")
    good = (tmp_path / "slide_01.tif").read_bytes()
    _corrupt_first_tile(tmp_path / "slide_01.tif")
    _blank_slide(tmp_path / "slide_02.tif")
    cohort = _read(manifest, tmp_path)
    with pytest.warns(UserWarning, match="2 of 4 slides failed") as record:
        frame = hx.tl.embed_cohort(cohort, **SLIDE_OPTIONS)
    assert list(frame["status"]) == ["computed", "failed", "failed", "computed"]
    assert "is blank: every pixel is 250" in frame.loc["slide_02", "error"]
    said = next(str(w.message) for w in record if "slides failed" in str(w.message))
    assert "slide_01" in said and "slide_02" in said and "JPEG" in said
    assert cohort.store("slide_00").complete and not cohort.store("slide_01").complete
    # the next run retries the failed slides only
    (tmp_path / "slide_01.tif").write_bytes(good)
    with pytest.warns(UserWarning, match="1 of 4 slides failed"):
        again = hx.tl.embed_cohort(cohort, **SLIDE_OPTIONS)
    assert list(again["status"]) == ["skipped", "computed", "failed", "skipped"]
    assert cohort.store("slide_01").features("he_tiles", "X_handcrafted").shape[0] > 0


# --- slides by content --------------------------------------------------------------------------

@bad_input("silently wrong", "a slide file replaced by another of the same byte size after "
           "embed_cohort (its store then skipped, the old features reused)",
           says="ValueError: `The slide file of 'slide_00' is not the one its store ... was "
                "made from`; overwrite=True recomputes it",
           fix="pass overwrite=True (or another store_dir)")
def test_a_slide_replaced_by_one_of_the_same_size_is_not_skipped(tmp_path):
    manifest = _cohort_files(tmp_path, 2, compression="none")
    first, second = tmp_path / "slide_00.tif", tmp_path / "slide_01.tif"
    assert first.stat().st_size == second.stat().st_size
    cohort = _read(manifest, tmp_path)
    hx.tl.embed_cohort(cohort, **SLIDE_OPTIONS)
    theirs = cohort.store("slide_01").features("he_tiles", "X_handcrafted")
    shutil.copyfile(second, first)
    with pytest.raises(ValueError, match="is not the one its store"):
        hx.tl.embed_cohort(cohort, **SLIDE_OPTIONS)
    frame = hx.tl.embed_cohort(cohort, **SLIDE_OPTIONS, overwrite=True)
    assert frame.loc["slide_00", "status"] == "computed"
    assert frame.loc["slide_01", "status"] == "skipped"
    np.testing.assert_allclose(cohort.store("slide_00").features("he_tiles", "X_handcrafted"),
                               theirs)


def test_file_fingerprint_samples_large_files(tmp_path, monkeypatch):
    from histoexpr._core import memory as _memory

    monkeypatch.setattr(_memory, "WHOLE_FILE_BYTES", 1024)
    path = tmp_path / "big.bin"
    data = np.random.default_rng(0).integers(0, 256, 12 * 2**20, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    before = _memory.file_fingerprint(path)
    assert before["hashed"] == "sampled" and before["bytes"] == data.size
    data[:16] ^= 1  # another scan of the same size: its header differs
    path.write_bytes(data.tobytes())
    assert _memory.file_fingerprint(path) != before


# --- pixel sizes --------------------------------------------------------------------------------

@bad_input("silently wrong", "a cohort of slides at different pixel sizes tiled with "
           "`size_px=` and no `mpp=` (16 um tiles on some, 32 um on others under one key)",
           says="ValueError: `The slides have different pixel sizes (0.5 um/px (1 slides ...), "
                "1 um/px ...)`, before any slide is processed",
           fix="pass mpp= (tiles resampled to one pixel size) or size_um= with mpp=")
def test_mixed_pixel_sizes_with_size_px_are_refused(tmp_path):
    manifest = _cohort_files(tmp_path, 2)
    frame = pd.read_csv(manifest)
    frame["mpp"] = [1.0, 0.5]
    frame.to_csv(manifest, index=False)
    cohort = _read(manifest, tmp_path)
    with pytest.raises(ValueError, match="different pixel sizes"):
        hx.tl.embed_cohort(cohort, encoder="handcrafted", size_px=16)
    assert not (tmp_path / "stores").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = hx.tl.embed_cohort(cohort, encoder="handcrafted", size_px=16, mpp=2.0)
    assert list(frame["status"]) == ["computed", "computed"]


# --- memory and time bounded before they are spent ----------------------------------------------


@bad_input("obscure error", "`hx.io.read_region(sdata, 'he', box, mpp=1e-5)`: a tiny pixel size "
           "(TiB allocated)",
           says="MemoryError: `Reading a region of 20,000,000 x 20,000,000 px at 1e-05 um/px "
                "would allocate 1.1 PiB, more than the ... allowed`, before allocating",
           fix="pass a coarser mpp= or a smaller box")
def test_read_region_estimates_before_allocating(disk_section):
    with pytest.raises(MemoryError, match=r"would allocate 1\.1 PiB.*coarser mpp"):
        hx.io.read_region(disk_section, "he", (0, 0, 200, 200), mpp=1e-5)


@bad_input("obscure error", "a 1.5 kB model file whose configuration asks for 10^11 weights "
           "(allocated before its weights are checked)",
           says="ValueError: `... its configuration asks for 100,000,100,000 weights (372.5 GiB "
                "as float32) but it holds 10 ...`, before the network is built",
           fix="save the model again with hx.io.save_model")
def test_a_model_file_asking_for_absurd_weights_is_refused_unbuilt(tmp_path):
    import torch

    from histoexpr.models import MeanPoolLinear

    path = hx.io.save_model(MeanPoolLinear(in_features=4, n_outputs=2), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"] = {"in_features": 10**6, "n_outputs": 10**5}
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"asks for 100,000,100,000 weights"):
        hx.io.load_model(path, device="cpu")


# --- scale stated, never assumed ----------------------------------------------------------------

def _tiff(path, pixels, **options):
    import tifffile

    tifffile.imwrite(path, pixels, tile=(64, 64), **options)
    return path


@bad_input("silently wrong", "12-bit data in a 16-bit TIFF, or float TIFFs (0..255, "
           "-0.5..0.5), read through `hx.io.read_wsi` (features on another scale, no word)",
           says="warning: `... holds 16-bit pixels that reach only 4095 of 65535 ...` / `... "
                "holds floating-point pixels from ... but histoexpr reads float pixels as "
                "intensities from 0 to 1 ...`, as read_st says",
           fix="rescale to the full range (or 0..1), or save as 8-bit")
@pytest.mark.parametrize(("dtype", "high", "said"), [
    ("uint16", 4095, "reach only 40"),
    ("float32", 255.0, "floating-point pixels from"),
    ("float32", -0.5, "floating-point pixels from -0.5"),
])
def test_read_wsi_warns_of_pixels_off_the_scale(tmp_path, caplog, dtype, high, said):
    rng = np.random.default_rng(0)
    pixels = (rng.random((128, 128, 3)) * abs(high)).astype(dtype)
    if high < 0:
        pixels = pixels + np.float32(high)
    path = _tiff(tmp_path / "slide.tif", pixels, photometric="rgb", resolution=(2.0, 2.0),
                 resolutionunit="MICROMETER")
    with caplog.at_level("WARNING", logger="histoexpr"):
        hx.io.read_wsi(path)
    assert said in caplog.text
    caplog.clear()
    fine = _tiff(tmp_path / "fine.tif", (pixels.astype(float) * 0 + 40000).astype("uint16")
                 if dtype == "uint16" else np.clip(pixels, 0, 1).astype(dtype),
                 photometric="rgb", resolution=(2.0, 2.0), resolutionunit="MICROMETER")
    with caplog.at_level("WARNING", logger="histoexpr"):
        hx.io.read_wsi(fine)
    assert "pixels" not in caplog.text


@bad_input("silently wrong", "a slide whose only scale is a 600 dpi resolution tag (read as 42 "
           "um/px)",
           says="ValueError: `The pixel size of 'slide.tif' is not in its metadata (... its "
                "resolution tag: 600 dpi (42.33 um/px)). Pass it: read_wsi(path, mpp=0.5) ...`",
           fix="pass mpp= (a scanner's 50,800 dpi tag, 0.5 um/px, is still read)")
def test_read_wsi_does_not_take_a_print_resolution_for_a_pixel_size(tmp_path):
    pixels = np.full((128, 128, 3), 200, np.uint8)
    path = _tiff(tmp_path / "slide.tif", pixels, photometric="rgb", resolution=(600, 600),
                 resolutionunit="INCH")
    with pytest.raises(ValueError, match=r"600 dpi \(42\.33 um/px\)\)\. Pass it"):
        hx.io.read_wsi(path)
    assert hx.io.get_pixel_size(hx.io.read_wsi(path, mpp=0.5), "he") == 0.5
    scanner = _tiff(tmp_path / "scanner.tif", pixels, photometric="rgb",
                    resolution=(50800, 50800), resolutionunit="INCH")
    assert hx.io.get_pixel_size(hx.io.read_wsi(scanner), "he") == pytest.approx(0.5)


@bad_input("silently wrong", "a slide with non-square pixels (x 0.5, y 1.0 um/px in its "
           "resolution tags; read as square)",
           says="ValueError: `The slide's pixels are not square (TIFF XResolution/YResolution: "
                "x 0.5, y 1 um/px) ... Resample it to square pixels first`",
           fix="resample to square pixels, or pass mpp= if the tags are wrong")
def test_read_wsi_refuses_non_square_pixels(tmp_path):
    pixels = np.full((128, 128, 3), 200, np.uint8)
    path = _tiff(tmp_path / "slide.tif", pixels, photometric="rgb", resolution=(2.0, 1.0),
                 resolutionunit="MICROMETER")
    with pytest.raises(ValueError, match="pixels are not square"):
        hx.io.read_wsi(path)


@bad_input("obscure error", "`hx.io.read_wsi('he.png', mpp=...)` (or `read_transcripts(..., "
           "image='he.tif')`) on a plain image larger than the memory: decoded whole",
           says="MemoryError: `Reading the slide he.png whole (300 x 200 px, 3 channel(s) of "
                "uint8) would allocate ... Convert it to a pyramidal (OME-)TIFF ... read it with "
                "hx.io.read_wsi(path, mpp=...), which reads it lazily`, from the file's header, "
                "before any pixel is decoded",
           fix="convert the image to a pyramidal (OME-)TIFF and read it with hx.io.read_wsi")
def test_plain_images_are_estimated_from_their_header(tmp_path, monkeypatch):
    import tifffile
    from PIL import Image, ImageFile

    pixels = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    png, tif = tmp_path / "he.png", tmp_path / "he.tif"
    Image.fromarray(pixels).save(png)
    tifffile.imwrite(tif, pixels, photometric="rgb")
    written = {path: path.read_bytes() for path in (png, tif)}
    hx.settings.max_memory = "200 KiB"  # the image is 176 KiB; 234 (TIFF), 410 (PNG) with copies

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixels decoded before the estimate")

    with monkeypatch.context() as patched:
        patched.setattr(ImageFile.ImageFile, "load", no_decoding)
        patched.setattr(tifffile.TiffPageSeries, "asarray", no_decoding)
        with pytest.raises(MemoryError, match=r"Reading the slide he\.png whole \(300 x 200 px, 3 "
                                              r"channel\(s\) of uint8\).*hx\.io\.read_wsi"):
            hx.io.read_wsi(png, mpp=1.0)
        points = pd.DataFrame({"x": [1.0, 2.0], "y": [1.0, 2.0], "gene": ["A", "B"]})
        with pytest.raises(MemoryError, match=r"Reading the image he\.tif whole \(300 x 200 px"):
            hx.io.read_transcripts(points, image=tif)
    assert {path: path.read_bytes() for path in (png, tif)} == written
    # the fix: a tiled, pyramidal TIFF, which read_wsi reads lazily under the same limit
    pyramid = tmp_path / "he.ome.tif"
    with tifffile.TiffWriter(pyramid) as writer:
        writer.write(pixels, photometric="rgb", tile=(64, 64), subifds=1)
        writer.write(pixels[::2, ::2], photometric="rgb", tile=(64, 64), subfiletype=1)
    sdata = hx.io.read_wsi(pyramid, mpp=1.0)
    assert np.array_equal(hx.io.read_region(sdata, "he", (0, 0, 50, 40), mpp=1.0),
                          np.moveaxis(pixels[:40, :50], -1, 0))


@bad_input("obscure error", "`hx.io.read_transcripts(..., labels='nuclei.npz')`: a sparse label "
           "image whose dense array exceeds the memory",
           says="MemoryError: `The labels nuclei.npz as a dense 400 x 500 px array of int32 (and "
                "the sorted copy that counts them) would allocate 1.5 MiB ...`, from the npz's "
                "shape, before it is made dense",
           fix="crop the labels (and the image) to the region needed, or leave labels= out")
def test_sparse_labels_are_estimated_before_they_are_made_dense(tmp_path):
    import scipy.sparse as sp

    labels = np.zeros((500, 400), dtype=np.int32)
    labels[10:20, 10:20] = 1
    path = tmp_path / "nuclei.npz"
    sp.save_npz(path, sp.csr_matrix(labels))
    written = path.read_bytes()
    points = pd.DataFrame({"x": [11.0, 15.0], "y": [11.0, 15.0], "gene": ["A", "B"]})
    hx.settings.max_memory = "1 MiB"
    with pytest.raises(MemoryError, match=r"The labels nuclei\.npz as a dense 400 x 500 px array "
                                          r"of int32.*would allocate 1\.5 MiB.*leave labels= out"):
        hx.io.read_transcripts(points, labels=path)
    assert path.read_bytes() == written
    hx.settings.max_memory = "4 MiB"
    sdata = hx.io.read_transcripts(points, labels=path)
    assert np.asarray(sdata.labels["nuclei"]).shape == (500, 400)


@bad_input("obscure error", "`hx.io.read_transcripts('transcripts.csv.gz')` or "
           "`hx.io.read_cell_boundaries(...)` of a table larger than the memory (read whole by "
           "pandas: about 3-6 times its text)",
           says="MemoryError: `Reading the transcript table tx.csv.gz (... of text, about ... "
                "rows) would allocate ... Read the columns and rows you need yourself and pass "
                "the DataFrame (e.g. pandas.read_csv(path, usecols=['x', 'y', 'gene']) ...`, "
                "from the file's size and first MiB, before the table is read",
           fix="read the columns (usecols=) or rows you need with pandas and pass the DataFrame")
def test_transcript_tables_are_estimated_before_they_are_read(tmp_path, monkeypatch):
    from histoexpr.io import _transcripts

    rng = np.random.default_rng(0)
    n = 60_000  # 1.2 MB of text: more than the head read to estimate it
    frame = pd.DataFrame({"x": rng.uniform(0, 500, n).round(3),
                          "y": rng.uniform(0, 500, n).round(3),
                          "gene": rng.choice([f"G{i}" for i in range(50)], n)})
    plain, packed, cells = tmp_path / "tx.csv", tmp_path / "tx.csv.gz", tmp_path / "cells.csv.gz"
    frame.to_csv(plain, index=False)
    frame.to_csv(packed, index=False)
    frame.assign(poly_ID=np.arange(n) // 20).drop(columns="gene").to_csv(cells, index=False)
    expected = hx.io.read_transcripts(frame).points["transcripts"].compute()
    boundaries = hx.io.read_cell_boundaries(frame.assign(poly_ID=np.arange(n) // 20))

    def not_read(*args, **kwargs):
        raise AssertionError("the table was read")

    with monkeypatch.context() as patch:
        patch.setattr(_transcripts, "read_text_table", not_read)
        hx.settings.max_memory = "2 MiB"  # 60,000 rows of 24 B as pandas holds them, times 6
        for path in (plain, packed):
            with pytest.raises(MemoryError, match=rf"Reading the transcript table {path.name} "
                               r"\(.* of text, about [\d,]+ rows\) would allocate .*"
                               r"usecols=\['x', 'y', 'gene'\]") as refused:
                hx.io.read_transcripts(path)
            rows = int(re.search(r"about ([\d,]+) rows", str(refused.value))[1].replace(",", ""))
            assert abs(rows - n) < 0.05 * n  # the gzip's text extrapolated from its head
        with pytest.raises(MemoryError, match=r"Reading the boundary table cells\.csv\.gz .*"
                                              r"usecols=\['x', 'y', 'poly_ID'\]"):
            hx.io.read_cell_boundaries(cells)
    hx.settings.max_memory = None
    for path in (plain, packed):  # within the memory: read as before
        points = hx.io.read_transcripts(path).points["transcripts"].compute()
        pd.testing.assert_frame_equal(points, expected)
    read = hx.io.read_cell_boundaries(cells)
    assert read.index.equals(boundaries.index)
    assert read.geometry.geom_equals_exact(boundaries.geometry, 0).all()


def test_read_wsi_records_the_file_each_image_came_from(tmp_path):
    from histoexpr._core.image_facts import source_of

    _blank_slide(tmp_path / "slide.tif")
    sdata = hx.io.read_wsi(tmp_path / "slide.tif")
    assert source_of(sdata, "he") == str(tmp_path / "slide.tif")
    # another image under that key is not the file's: no name for it
    _blank_slide(tmp_path / "other.tif")
    sdata.images["he"] = hx.io.read_wsi(tmp_path / "other.tif", image_key="x").images["x"]
    assert source_of(sdata, "he") is None
    # the same file read again holds the same pixels: the same lazy array, the same file
    sdata.images["he"] = hx.io.read_wsi(tmp_path / "slide.tif", image_key="x").images["x"]
    assert source_of(sdata, "he") == str(tmp_path / "slide.tif")
    assert source_of(hx.io.read_wsi(tmp_path / "slide.tif"), "other") is None  # no such image
