"""What a new user's first files do: images saved in other colour modes, plain JPEG/PNG slides,
scanpy tables, tiny sections (every real data set read and analysed with the public API).

Each test asserts the right result (the pixels are the colours seen, the levels are computed
once, the message names the problem and its fix), not only that something ran.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from _catalogue import bad_input

import histoexpr as hx


def _he_pixels(seed: int = 0, shape=(60, 80)) -> np.ndarray:
    """A small (y, x, 3) uint8 'H&E': pink tissue with purple dots on white."""
    rng = np.random.default_rng(seed)
    image = np.full((*shape, 3), 245, dtype=np.uint8)
    image[10:50, 15:70] = (230, 150, 200)
    dots = rng.random(shape) < 0.05
    image[dots] = (80, 40, 140)
    return image


def _read(path, **options):
    """The pixels ``(c, y, x)`` of ``path`` as read_transcripts reads an image beside a table."""
    table = pd.DataFrame({"x": [1.0, 5.0], "y": [2.0, 3.0], "gene": ["A", "B"]})
    sdata = hx.io.read_transcripts(table, image=path, image_key="he", **options)
    return np.asarray(sdata.images["he"]["scale0"]["image"].values), sdata


@bad_input("silently wrong", "an H&E saved as a palette PNG (PIL mode 'P')",
           says="log: converted from PIL mode P; the pixels are its colours (before: the palette "
                "indices, read as one grey channel)",
           fix="nothing: it is read as RGB")
def test_palette_png_is_read_as_its_colours(tmp_path, caplog):
    from PIL import Image

    rgb = _he_pixels()
    path = tmp_path / "he.png"
    Image.fromarray(rgb).quantize(colors=16).save(path)
    expected = np.asarray(Image.open(path).convert("RGB"))
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        pixels, _ = _read(path)
    assert pixels.shape == (3, *rgb.shape[:2])
    np.testing.assert_array_equal(np.moveaxis(pixels, 0, -1), expected)
    assert "mode P" in caplog.text


@bad_input("silently wrong", "an H&E saved as a CMYK JPEG",
           says="log: converted from PIL mode CMYK to RGB (before: C, M, Y, K read as r, g, b, a)",
           fix="nothing: it is read as RGB")
def test_cmyk_jpeg_is_read_as_rgb(tmp_path):
    from PIL import Image

    path = tmp_path / "he.jpg"
    Image.fromarray(_he_pixels()).convert("CMYK").save(path, quality=95)
    expected = np.asarray(Image.open(path).convert("RGB"))
    pixels, sdata = _read(path)
    assert list(sdata.images["he"]["scale0"]["image"].c.values) == ["r", "g", "b"]
    np.testing.assert_array_equal(np.moveaxis(pixels, 0, -1), expected)


@bad_input("silently wrong", "an H&E PNG with an alpha channel (RGBA) given to read_st or "
           "read_transcripts (read_visium already dropped it)",
           says="log: dropped the alpha channel (a warning with the share of pixels that are not "
                "opaque); the image has 3 channels like any H&E (before: 4, so its tiles had an "
                "extra channel and a model trained on RGB refused them)",
           fix="flatten the image onto its background first if transparent pixels hide colour")
@pytest.mark.parametrize("opaque", [True, False])
def test_alpha_channel_is_dropped(tmp_path, caplog, opaque):
    from PIL import Image

    rgb = _he_pixels()
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    if not opaque:
        alpha[:6] = 0
    path = tmp_path / "he.png"
    Image.fromarray(np.dstack([rgb, alpha])).save(path)
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        pixels, _ = _read(path)
    np.testing.assert_array_equal(np.moveaxis(pixels, 0, -1), rgb)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    if opaque:
        assert not warnings and "every pixel opaque" in caplog.text
    else:
        assert len(warnings) == 1 and "10.0% of its pixels are not opaque" in caplog.text


def test_grey_alpha_png_and_rgba_tiff_lose_only_the_alpha(tmp_path):
    import tifffile
    from PIL import Image

    rgb = _he_pixels()
    grey = rgb[..., 0]
    Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), mode="LA").save(tmp_path / "g.png")
    pixels, _ = _read(tmp_path / "g.png")
    np.testing.assert_array_equal(pixels, grey[None])
    rgba = np.dstack([rgb, np.full_like(grey, 255)])
    tifffile.imwrite(tmp_path / "he.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgba, -1, 0), photometric="rgb",
                     planarconfig="separate", extrasamples=["unassalpha"])
    for name in ("he.tif", "planar.tif"):
        pixels, _ = _read(tmp_path / name)
        np.testing.assert_array_equal(np.moveaxis(pixels, 0, -1), rgb)


def test_palette_label_png_keeps_its_label_values(tmp_path):
    from PIL import Image

    labels = np.zeros((40, 50), np.uint8)
    labels[5:15, 5:20], labels[20:30, 25:45] = 1, 2
    image = Image.fromarray(labels, mode="L").convert("P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    image.save(tmp_path / "labels.png")
    table = pd.DataFrame({"x": [1.0], "y": [2.0], "gene": ["A"]})
    sdata = hx.io.read_transcripts(table, labels=tmp_path / "labels.png")
    np.testing.assert_array_equal(np.asarray(sdata.labels["nuclei"].values), labels)


@bad_input("silently wrong", "a TIFF image stored as a palette or CMYK (photometric PALETTE or "
           "SEPARATED)",
           says="ValueError: ... stores its pixels as ... (not grey or RGB), which histoexpr "
                "does not convert. Save it as an RGB or grey image first",
           fix="convert it to RGB, e.g. PIL.Image.open(path).convert('RGB').save('he.png')")
@pytest.mark.parametrize("mode", ["P", "CMYK"])
def test_palette_or_cmyk_tiff_is_refused(tmp_path, mode):
    from PIL import Image

    path = tmp_path / "he.tif"
    Image.fromarray(_he_pixels()).convert(mode).save(path)
    with pytest.raises(ValueError, match=r"stores its pixels as (PALETTE|SEPARATED).*"
                                         r"convert\('RGB'\)"):
        _read(path)


@bad_input("obscure error", "`hx.io.read_wsi('he.jpg')`: a plain JPEG/PNG H&E with no "
           "transcripts (the error sent the user to read_transcripts(image=...), which needs a "
           "transcript table)",
           says="ValueError: 'he.jpg' is a JPEG image, which does not state its pixel size. "
                "Pass it: read_wsi(path, mpp=0.5)",
           fix="pass mpp=; read_wsi then reads the image whole, with its pyramid")
def test_read_wsi_reads_a_plain_jpeg_or_png_with_mpp(tmp_path):
    from PIL import Image

    rgb = _he_pixels(shape=(90, 120))
    Image.fromarray(rgb).save(tmp_path / "he.png")
    Image.fromarray(rgb).save(tmp_path / "he.jpg", quality=95)
    with pytest.raises(ValueError, match=r"'he.jpg' is a JPEG image.*read_wsi\(path, mpp=0.5\)"):
        hx.io.read_wsi(tmp_path / "he.jpg")
    sdata = hx.io.read_wsi(str(tmp_path / "he.png"), mpp=2.0)
    assert hx.io.get_pixel_size(sdata, "he") == pytest.approx(2.0)
    region = hx.io.read_region(sdata, "he", (30.0, 20.0, 60.0, 40.0))  # um at 2 um/px
    np.testing.assert_array_equal(np.moveaxis(region, 0, -1), rgb[10:20, 15:30])


def test_coarse_levels_of_an_in_memory_image_are_computed_once():
    import dask.array as da
    from spatialdata.models import Image2DModel

    from histoexpr.io._elements import image_element

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (3, 2300, 2100), dtype=np.uint8)
    element = image_element(pixels, mpp=0.5)
    assert list(element) == ["scale0", "scale1"]
    level = element["scale1"]["image"].data
    assert isinstance(level, da.Array)
    # materialised: one task per chunk, no reduction of scale0 left to redo at every read
    assert len(level.__dask_graph__()) == level.npartitions
    lazy = Image2DModel.parse(pixels, dims=("c", "y", "x"), scale_factors=[2],
                              chunks=(3, 1024, 1024))["scale1"]["image"].values
    np.testing.assert_array_equal(level.compute(), lazy)


@bad_input("obscure error", "a scanpy AnnData whose uns['spatial'] holds only the 'lowres' "
           "image, drawn with `hx.pl.spots(adata, color=...)`",
           says="(before: KeyError: 'hires') the lowres image is drawn with its own scale factor",
           fix="nothing")
def test_spots_of_a_table_with_only_a_lowres_image(tmp_path):
    import anndata as ad

    lowres = np.zeros((50, 40, 3), np.uint8)
    adata = ad.AnnData(np.ones((3, 2), np.float32))
    adata.var_names = ["A", "B"]
    adata.obsm["spatial"] = np.array([[100.0, 100.0], [200.0, 300.0], [350.0, 450.0]])
    adata.uns["spatial"] = {"lib": {"images": {"lowres": lowres},
                                    "scalefactors": {"tissue_lowres_scalef": 0.1,
                                                     "spot_diameter_fullres": 40.0}}}
    ax = hx.pl.spots(adata, color="A")
    [image] = ax.get_images()
    assert image.get_extent() == pytest.approx((0, 400, 500, 0))  # 40 x 50 px / 0.1
    assert ax.get_xlabel() == "x (full-resolution px)"  # scanpy's obsm["spatial"]: not um


@bad_input("silently wrong", "a pyramidal RGB + alpha TIFF slide (e.g. `vips tiffsave` of an "
           "image with transparency) given to `hx.io.read_wsi`",
           says="log: dropped the alpha channel (before: a 4th channel 'a', so tiles had 4 "
                "channels and a model trained on RGB refused them)",
           fix="nothing: it is read as RGB")
def test_read_wsi_drops_the_alpha_of_an_rgba_slide(tmp_path):
    import tifffile

    rgb = _he_pixels(shape=(256, 320))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(path) as writer:
        options = dict(tile=(64, 64), photometric="rgb", extrasamples=["unassalpha"])
        writer.write(rgba, subifds=1, resolution=(1e4, 1e4), resolutionunit="CENTIMETER",
                     **options)
        writer.write(rgba[::2, ::2], subfiletype=1, **options)
    sdata = hx.io.read_wsi(path)
    tree = sdata.images["he"]
    assert list(tree["scale0"]["image"].c.values) == ["r", "g", "b"]
    assert [tree[k]["image"].shape[0] for k in tree] == [3, 3]
    np.testing.assert_array_equal(np.moveaxis(tree["scale0"]["image"].values, 0, -1), rgb)
    assert hx.io.get_pixel_size(sdata, "he") == pytest.approx(1.0)


@bad_input("obscure error", "`hx.io.read_visium` given a file or the spatial/ folder of a Space "
           "Ranger output instead of the output folder",
           says="FileNotFoundError: '.../outs/spatial' has no 'spatial/' folder; pass the Space "
                "Ranger output folder (e.g. '.../outs', which holds the spatial/ folder)",
           fix="pass the folder named in the message")
def test_read_visium_names_the_folder_to_pass(tmp_path):
    outs = tmp_path / "outs"
    (outs / "spatial").mkdir(parents=True)
    (outs / "filtered_feature_bc_matrix.h5").write_bytes(b"")
    (outs / "spatial" / "tissue_positions.csv").write_text("barcode\n")
    for given in (outs / "spatial", outs / "filtered_feature_bc_matrix.h5",
                  outs / "spatial" / "tissue_positions.csv"):
        with pytest.raises(FileNotFoundError, match=rf"e\.g\. '{outs}', which holds the spatial/"):
            hx.io.read_visium(given)


@pytest.mark.realdata
@bad_input("silently wrong", "`hx.io.read_visium('runA', counts_file='../runB/"
           "filtered_feature_bc_matrix.h5')` (a path out of the run's folder): another run's "
           "counts read as this run's",
           says="ValueError: counts_file='../runB/filtered_feature_bc_matrix.h5' cannot name a "
                "counts file inside the Visium folder ... it holds a path separator",
           fix="the name of the counts file inside the run's folder (e.g. "
               "counts_file='raw_feature_bc_matrix.h5')")
def test_read_visium_counts_file_is_a_name_in_the_run_folder(data_dir, tmp_path):
    import shutil

    from conftest import tree_digest

    for run in ("runA", "runB"):
        shutil.copytree(data_dir / "visium" / "scanpy_visium_1.0.0", tmp_path / run)
    (tmp_path / "runA" / "filtered_feature_bc_matrix.h5").rename(
        tmp_path / "runA" / "counts.h5")  # runA's counts under another name
    before = tree_digest(tmp_path)
    for given in ("../runB/filtered_feature_bc_matrix.h5", str(tmp_path / "runB" / "x.h5"),
                  "..", ""):
        with pytest.raises(ValueError, match=r"counts_file=.* cannot name a counts file inside "
                                             r"the Visium folder"):
            hx.io.read_visium(tmp_path / "runA", counts_file=given)
    assert tree_digest(tmp_path) == before
    sdata = hx.io.read_visium(tmp_path / "runA", counts_file="counts.h5")  # a name: read
    assert sdata.tables["table"].shape == (100, 100)


@bad_input("obscure error", "`histoexpr predict --image he.png` (a plain PNG/JPEG H&E) without "
           "--mpp",
           says="error: ... 'he.png' is a PNG image, which does not state its pixel size ... On "
                "the command line: --mpp 0.5 (before: 'not a slide histoexpr can read', even "
                "with --mpp)",
           fix="pass --mpp")
def test_cli_predicts_on_a_png_with_mpp(tmp_path, capsys, synthetic):
    import spatialdata as sd
    from PIL import Image

    from histoexpr._cli import EXIT_BAD_INPUT, main

    genes = ["EPCAM", "COL1A1"]
    train = synthetic(seed=0, size_um=300, spot_pitch_um=40,
                      spot_diameter_um=35)
    model = hx.io.save_model(hx.tl.fit(train, model="spot_regressor", genes=genes, size_um=40.0,
                                       mpp=1.0), tmp_path / "spots.pt")
    section = hx.datasets.synthetic_section(seed=1, size_um=300)
    png = tmp_path / "he.png"
    Image.fromarray(np.moveaxis(np.asarray(section.images["he"].values), 0, -1)).save(png)
    out = tmp_path / "pred.zarr"
    assert main(["predict", "-m", str(model), "-i", str(png), "-o", str(out)]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert "is a PNG image, which does not state its pixel size" in error
    assert "On the command line: --mpp 0.5" in error
    assert not out.exists()
    assert main(["predict", "-m", str(model), "-i", str(png), "-o", str(out), "--mpp",
                 "0.5"]) == 0
    written = sd.read_zarr(out).tables["he_expr_tiles_expression"]
    expected = hx.tl.predict(hx.io.load_model(model), hx.io.read_wsi(png, mpp=0.5))
    np.testing.assert_allclose(np.asarray(written.X), np.asarray(expected.X), rtol=1e-5,
                               atol=1e-6)


@bad_input("silently wrong", "an H&E saved as a float TIFF with values 0..255 (floats are read "
           "as intensities 0..1, so its tiles were 255 times brighter than other images')",
           says="warning: ... holds floating-point pixels from 0 to 255, but histoexpr reads "
                "float pixels as intensities from 0 to 1 ...",
           fix="save it as 8- or 16-bit integers, or scaled to 0..1")
def test_float_image_outside_0_1_is_named(tmp_path, caplog):
    import tifffile

    rgb = _he_pixels()
    tifffile.imwrite(tmp_path / "scaled.tif", rgb.astype(np.float32) / 255, photometric="rgb")
    tifffile.imwrite(tmp_path / "raw.tif", rgb.astype(np.float32), photometric="rgb")
    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        pixels, _ = _read(tmp_path / "scaled.tif")
    assert not caplog.records
    np.testing.assert_allclose(np.moveaxis(pixels, 0, -1), rgb / 255, atol=1e-6)
    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        _read(tmp_path / "raw.tif")
    assert "holds floating-point pixels from 40 to 245" in caplog.text


@pytest.mark.realdata
@bad_input("obscure error", "legacy-ST counts or spot file saved comma-separated (.csv), or the "
           "two swapped, given to `hx.io.read_st`",
           says="(before: 'no spots named like 12x7 ... first rows: [<the whole first line>]') "
                "read as the tab-separated files are; swapped: 'is a spot file (it has pixel_x "
                "and pixel_y), not counts: pass it as spots='",
           fix="nothing for .csv; pass the files in the order counts, spots, image")
def test_read_st_takes_comma_separated_files(data_dir, tmp_path):
    root = data_dir / "mob_st"
    counts, spots, image = (root / "MOB1.tsv.gz", root / "alignment_table_MOB1.tsv",
                            root / "MOB1.jpg")
    pd.read_csv(counts, sep="\t", index_col=0).to_csv(tmp_path / "counts.csv")
    pd.read_csv(spots, sep="\t").to_csv(tmp_path / "spots.csv", index=False)
    expected = hx.io.read_st(counts, spots, image)
    got = hx.io.read_st(tmp_path / "counts.csv", str(tmp_path / "spots.csv"), str(image))
    want, have = expected.tables["table"], got.tables["table"]
    assert list(have.obs_names) == list(want.obs_names)
    assert list(have.var_names) == list(want.var_names)
    assert (have.X != want.X).nnz == 0
    np.testing.assert_array_equal(have.obsm["spatial"], want.obsm["spatial"])
    with pytest.raises(ValueError, match=r"is a spot file \(it has pixel_x and pixel_y\), not "
                                         r"counts: pass it as spots="):
        hx.io.read_st(spots, counts, image)


@bad_input("silently wrong", "a JPEG whose EXIF orientation tag says 'turned' (viewers show it "
           "rotated; histoexpr reads the stored pixels)",
           says="warning: ... carries EXIF orientation 6: image viewers show it turned or "
                "mirrored, but it is read as stored",
           fix="save it upright first (PIL.ImageOps.exif_transpose) if the spots sit off the "
               "tissue")
def test_exif_orientation_is_named(tmp_path, caplog):
    from PIL import Image

    rgb = _he_pixels()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "turned.jpg", quality=95, exif=exif.tobytes())
    Image.fromarray(rgb).save(tmp_path / "upright.jpg", quality=95)
    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        upright, _ = _read(tmp_path / "upright.jpg")
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        turned, _ = _read(tmp_path / "turned.jpg")
    assert "carries EXIF orientation 6" in caplog.text
    np.testing.assert_array_equal(turned, upright)  # the stored pixels, not turned



@bad_input("obscure error", "`encoder='hf:<folder>'` whose preprocessor_config.json is not JSON "
           "(cut short, or another file saved under its name) or holds values of the wrong kind",
           says="ValueError: .../preprocessor_config.json is not readable JSON (JSONDecodeError: "
                "...) ... Copy the model's preprocessor_config.json again (before: json's "
                "JSONDecodeError, naming no file)",
           fix="copy the file again from the model, or delete it (ImageNet's mean and std)")
def test_a_malformed_preprocessor_config_names_the_file(tmp_path):
    import json
    from types import SimpleNamespace

    from conftest import tree_digest

    from histoexpr.models._foundation import _processing

    config = SimpleNamespace(image_size=28)
    path = tmp_path / "preprocessor_config.json"
    good = {"image_mean": [0.7, 0.5, 0.65], "image_std": [0.15, 0.2, 0.25],
            "size": {"height": 28, "width": 28}}
    path.write_text(json.dumps(good))
    assert _processing(tmp_path, config)["normalisation"]["mean"] == [0.7, 0.5, 0.65]
    for content, says in (
            ('{"image_mean": [0.7, 0.5', r"is not readable JSON \(JSONDecodeError"),
            ("[1, 2, 3]", r"holds a list, not an image processor configuration"),
            (json.dumps({**good, "image_mean": "0.7"}), "is not an image processor "
                                                        "configuration histoexpr can read"),
            (json.dumps({**good, "size": "large"}), "is not an image processor configuration")):
        path.write_text(content)
        before = tree_digest(tmp_path)
        with pytest.raises(ValueError, match=rf"preprocessor_config\.json {says}.*Copy the "
                                             r"model's preprocessor_config\.json again"):
            _processing(tmp_path, config)
        assert tree_digest(tmp_path) == before
