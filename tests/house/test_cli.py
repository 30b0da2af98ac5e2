"""The command line: the demo writes a complete report; bad input exits with a message."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import spatialdata as sd
import tifffile
from _catalogue import bad_input
from conftest import make_disk_section, tree_digest

import histoexpr as hx
from histoexpr._cli import EXIT_BAD_INPUT, EXIT_CANNOT_PREDICT, main
from histoexpr.models import TileEncoder


def test_demo_runs_every_job_and_scores_it_on_held_out_data(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--out", str(out), "--seed", "3", "--size", "quick"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 3 and metrics["size"] == "quick"
    # every job learned something that holds on the section or slides it never saw
    assert metrics["transcript_morphology"]["mean_dice"] > 0.5
    assert metrics["attention_mil"]["mean_pearson"] > 0.0
    assert metrics["spot_expression"]["mean_pearson"] > 0.0
    assert set(metrics["contrastive"]["probe_balanced_accuracy"]) == {"pretrained", "random_init"}
    for name in ("tiles.png", "spots.png", "labels.png", "training.png", "attention.png",
                 "prediction.png", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    summary = (out / "summary.md").read_text()
    assert "mean Dice" in summary and "labels.png" in summary
    section = sd.read_zarr(out / "section.zarr")
    assert section.tables["he_tiles_table"].n_obs == metrics["n_tiles"]
    assert {"he_tissue", "tx_labels"} <= set(section.labels)

    # running again must not overwrite silently
    assert main(["demo", "--out", str(out)]) == EXIT_BAD_INPUT
    assert "--overwrite" in capsys.readouterr().err


def test_help_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "histoexpr", "demo", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    assert "--out" in result.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"histoexpr {hx.__version__}"


def test_unknown_command_fails():
    result = subprocess.run([sys.executable, "-m", "histoexpr", "frobnicate"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


# --- histoexpr predict ---------------------------------------------------------------------------

GENES = ["EPCAM", "COL1A1", "PTPRC"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, synthetic):
    """A spot regressor (ridge on hand-crafted features) trained on one synthetic section."""
    train = synthetic(seed=0, size_um=400, spot_pitch_um=40,
                      spot_diameter_um=35)
    model = hx.tl.fit(train, model="spot_regressor", genes=GENES, size_um=40.0, mpp=1.0)
    return hx.io.save_model(model, tmp_path_factory.mktemp("model") / "spots.pt")


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """Another section's H&E as a plain TIFF (no pixel size in it: pass --mpp 0.5)."""
    section = hx.datasets.synthetic_section(seed=1, size_um=400)
    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    tifffile.imwrite(path, np.moveaxis(section.images["he"].values, 0, -1))
    return path


def test_predict_writes_what_the_python_api_predicts(model_file, slide, tmp_path):
    out = tmp_path / "pred.zarr"
    assert main(["predict", "--model", str(model_file), "--image", str(slide), "-o", str(out),
                 "--mpp", "0.5", "--batch-size", "16"]) == 0
    written = sd.read_zarr(out)
    table = written.tables["he_expr_tiles_expression"]
    assert list(table.var_names) == GENES
    # the same as hx.tl.predict on the same slide in Python
    expected = hx.tl.predict(hx.io.load_model(model_file, device="cpu"),
                             hx.io.read_wsi(slide, mpp=0.5), batch_size=16)
    np.testing.assert_allclose(np.asarray(table.X), np.asarray(expected.X), rtol=1e-5, atol=1e-6)
    # tiles of the model's 40 um, in um inside the 400 um slide
    bounds = written.shapes["he_expr_tiles"].total_bounds
    assert bounds.min() >= 0 and bounds.max() <= 400

    # a .zarr store is a slide too, and the output is never replaced silently
    again = tmp_path / "again.zarr"
    assert main(["predict", "-m", str(model_file), "-i", str(out), "-o", str(again)]) == \
        EXIT_CANNOT_PREDICT  # its predictions exist already: the model's predict refuses
    assert main(["predict", "-m", str(model_file), "-i", str(out), "-o", str(again),
                 "--overwrite"]) == 0  # unless asked to replace them
    np.testing.assert_allclose(np.asarray(sd.read_zarr(again).tables[
        "he_expr_tiles_expression"].X), np.asarray(expected.X), rtol=1e-5, atol=1e-6)
    assert main(["predict", "-m", str(model_file), "-i", str(out), "-o", str(out),
                 "--overwrite"]) == EXIT_BAD_INPUT  # never into the store being read
    assert main(["predict", "-m", str(model_file), "-i", str(slide), "-o", str(out),
                 "--mpp", "0.5"]) == EXIT_BAD_INPUT


def test_predict_says_how_much_of_the_slide_is_out_of_range(model_file, slide, tmp_path):
    from histoexpr._cli import run_predict

    out = tmp_path / "pred.zarr"
    ran = run_predict(model_file, slide, out, mpp=0.5, batch_size=16)
    guard = sd.read_zarr(out).tables["he_expr_tiles_expression"].uns["prediction"]["guard"]
    assert guard["available"] and not guard["warns"]  # another section of the same kind
    assert ran["guard"].startswith(f"{guard['fraction_out_of_range']:.0%} of "
                                   f"{guard['n_tiles']} tiles out of the training data's range")
    assert "within the training data's range" in ran["guard"]


@pytest.mark.parametrize("case", ["missing model", "foreign model", "unknown kind",
                                  "missing image", "unreadable image", "not zarr", "image key"])
def test_predict_bad_input_exits_with_a_message(case, model_file, slide, tmp_path, capsys):
    model, image, out, extra = model_file, slide, tmp_path / "out.zarr", []
    if case == "missing model":
        model, expected = tmp_path / "none.pt", (EXIT_BAD_INPUT, "No model file")
    elif case == "foreign model":
        model = tmp_path / "notes.pt"
        model.write_text("not a model")
        expected = (EXIT_BAD_INPUT, "not a readable torch file")
    elif case == "unknown kind":
        network = TileEncoder(arch="small_cnn", in_channels=3, width=8)
        network.metadata = {"model": "frobnicator"}
        model = hx.io.save_model(network, tmp_path / "frob.pt")
        expected = (EXIT_CANNOT_PREDICT, "'frobnicator' model, which this histoexpr cannot apply")
    elif case == "missing image":
        image, expected = tmp_path / "none.svs", (EXIT_BAD_INPUT, "No image at")
    elif case == "unreadable image":
        image = tmp_path / "slide.svs"
        image.write_text("not an image")
        expected = (EXIT_BAD_INPUT, "Cannot read")
    elif case == "not zarr":
        out, expected = tmp_path / "out.h5ad", (EXIT_BAD_INPUT, "must be a .zarr store")
    else:
        image = tmp_path / "section.zarr"
        hx.datasets.synthetic_section(seed=2, size_um=200).write(image)
        extra, expected = ["--image-key", "nuclei"], (EXIT_BAD_INPUT, "has no image 'nuclei'")
    code = main(["predict", "--model", str(model), "--image", str(image), "-o", str(out), *extra])
    assert code == expected[0]
    assert expected[1] in capsys.readouterr().err
    assert not out.exists()


@bad_input("obscure error", "`histoexpr predict -m encoder.pt` (or `hx.tl.predict`) with a tile "
           "encoder saved by `hx.io.save_model` (from `hx.tl.pretrain`) in place of a trained "
           "model",
           says="exit 3: encoder.pt holds a TileEncoder without metadata['model']: a network, "
                "not a model trained by hx.tl.fit ... give it as encoder= to hx.tl.embed, "
                "hx.tl.embed_cohort or hx.tl.fit (before: 'holds a None model ... may come from "
                "another version of histoexpr')",
           fix="predict with a model trained by hx.tl.fit; give the encoder as encoder=")
def test_an_encoder_file_given_as_the_model_is_named_as_one(slide, tmp_path, capsys):
    encoder = hx.io.save_model(TileEncoder(arch="small_cnn", in_channels=3, width=8),
                               tmp_path / "encoder.pt")
    manifest = tmp_path / "slides.csv"
    manifest.write_text(f"path\n{slide}\n")
    said = (f"{encoder} holds a TileEncoder without metadata['model']: a network, not a model "
            "trained by hx.tl.fit")
    for source in (["--image", str(slide), "-o", str(tmp_path / "out.zarr")],
                   ["--manifest", str(manifest), "--store-dir", str(tmp_path / "stores")]):
        assert main(["predict", "-m", str(encoder), *source]) == EXIT_CANNOT_PREDICT
        err = capsys.readouterr().err
        assert said in err and "give it as encoder= to hx.tl.embed" in err
    with pytest.raises(ValueError, match="give it as encoder= to hx.tl.embed"):
        hx.tl.predict(encoder, hx.datasets.synthetic_section(seed=0, size_um=200))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.pt", "slides.csv"]


@bad_input("silently wrong", "`histoexpr predict --image SLIDE --workers 8` (or `--store-dir "
           "DIR`): options of --manifest, silently ignored with --image",
           says="exit 2: --workers: with --image the slide is predicted here, in this process "
                "(--workers is for --manifest) ... Drop the option; nothing is read or written",
           fix="drop the option (or predict a manifest of slides with --manifest)")
def test_predict_image_refuses_the_options_of_a_manifest(model_file, slide, tmp_path, capsys,
                                                         monkeypatch):
    def not_loaded(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(hx.io, "load_model", not_loaded)
    out, stores = tmp_path / "out.zarr", tmp_path / "stores"
    base = ["predict", "-m", str(model_file), "-i", str(slide), "-o", str(out), "--mpp", "0.5"]
    before = tree_digest(tmp_path)
    assert main([*base, "--workers", "8"]) == EXIT_BAD_INPUT
    assert "--workers: with --image the slide is predicted here" in capsys.readouterr().err
    assert main([*base, "--store-dir", str(stores)]) == EXIT_BAD_INPUT
    assert "--store-dir: with --image the slide and its predictions are written to --out" in \
        capsys.readouterr().err
    assert main([*base, "--store-dir", str(stores), "--workers", "2"]) == EXIT_BAD_INPUT
    assert "Drop the options." in capsys.readouterr().err
    assert tree_digest(tmp_path) == before and not out.exists() and not stores.exists()


@bad_input("obscure error", "`histoexpr predict --image-key a/b` (a key that cannot name an "
           "element of a SpatialData)",
           says="exit 2: --image-key='a/b' cannot name an element of a SpatialData, before the "
                "model is loaded (before: spatialdata's ValidationError advising sanitize_table, "
                "after the model was loaded)",
           fix="a key of letters, digits, '_', '-' or '.'")
def test_predict_image_key_is_checked_before_the_model_is_loaded(model_file, slide, tmp_path,
                                                                 capsys, monkeypatch):
    def not_loaded(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(hx.io, "load_model", not_loaded)
    manifest = tmp_path / "slides.csv"
    manifest.write_text(f"path\n{slide}\n")
    before = tree_digest(tmp_path)
    for source in (["-i", str(slide), "-o", str(tmp_path / "out.zarr"), "--mpp", "0.5"],
                   ["--manifest", str(manifest)]):
        for key in ("a/b", ""):
            assert main(["predict", "-m", str(model_file), *source, "--image-key", key]) == \
                EXIT_BAD_INPUT
            assert f"--image-key={key!r} cannot name an element of a SpatialData" in \
                capsys.readouterr().err
    assert tree_digest(tmp_path) == before


def test_predict_names_a_manifest_it_cannot_read(model_file, tmp_path, capsys):
    manifest = tmp_path / "broken.csv"
    manifest.write_text('path,slide_id\n"slide_00.tif,a\n')
    before = tree_digest(tmp_path)
    assert main(["predict", "-m", str(model_file), "--manifest", str(manifest)]) == \
        EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert f"The manifest {str(manifest)!r} cannot be read as a comma-separated (CSV) table" in \
        error
    assert tree_digest(tmp_path) == before


def test_tiles_are_cut_as_the_model_was_trained():
    from histoexpr._cli import _tile_as_trained

    sdata = make_disk_section()
    _tile_as_trained(sdata, {"tiles_key": "tiles", "tile_um": 20.0, "mpp": 1.0}, "he")
    uns = sdata.tables["tiles_table"].uns["tiles"]
    assert (uns["size_um"], uns["mpp"]) == (20.0, 1.0)
    n_tiles = sdata.tables["tiles_table"].n_obs
    _tile_as_trained(sdata, {"tiles_key": "tiles", "tile_um": 40.0, "mpp": 1.0}, "he")
    assert sdata.tables["tiles_table"].n_obs == n_tiles  # existing tiles are used as they are


def test_predict_help_lists_options_and_exit_codes():
    result = subprocess.run([sys.executable, "-m", "histoexpr", "predict", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--model", "--image", "--out", "--mpp", "--batch-size", "exit codes"):
        assert option in result.stdout
