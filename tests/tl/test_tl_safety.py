"""Training, predicting and scoring refuse bad input clearly and never change or lose a user's data.

Each test is the check of one bad input of the catalogue (``docs/bad_inputs.md``). The sections
are small and made here in numpy (a second each), with spots whose expression follows the
colour of the tissue under them, so the spot regressor learns something real in seconds.
"""

from __future__ import annotations

import logging
import pickle

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from _catalogue import bad_input
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, Labels2DModel
from spatialdata.transformations import Scale

import histoexpr as hx
from histoexpr.io._elements import spot_elements

GENES = ["ERBB2", "KRT8", "COL1A1", "PTPRC"]
PATCH = {"size_um": 16.0, "mpp": 1.0}


def make_section(seed: int = 0, *, size_px: int = 160, channels: int = 3,
                 shift_um: float = 0.0) -> SpatialData:
    """A 160 x 160 um section at 1 um/px: tissue of two colours, spots every 16 um.

    ERBB2 and KRT8 follow the purple (epithelium-like) share under a spot, COL1A1 the pink,
    PTPRC is noise. ``shift_um`` moves the spots' coordinates (not the tissue).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size_px, :size_px]
    field = np.sin(xx / (9 + seed) + seed) + np.cos(yy / (13 - seed % 3) - seed)
    purple = field > 0
    rgb = np.where(purple[..., None], (120, 60, 160), (235, 160, 200)).astype(float)
    rgb += rng.normal(0, 12, rgb.shape)
    image = np.clip(rgb, 0, 255).astype(np.uint8)
    if channels == 1:
        image = image.mean(axis=-1, keepdims=True).astype(np.uint8)
    elif channels == 4:
        image = np.concatenate([image, np.full((*image.shape[:2], 1), 255, np.uint8)], axis=-1)
    names = ["r", "g", "b", "a"][:channels] if channels > 1 else ["grey"]
    he = Image2DModel.parse(np.moveaxis(image, -1, 0), dims=("c", "y", "x"), c_coords=names,
                            transformations={"global": Scale([1.0, 1.0], axes=("y", "x"))})
    tissue = Labels2DModel.parse(np.ones((size_px // 4, size_px // 4), dtype=np.uint8),
                                 dims=("y", "x"),
                                 transformations={"global": Scale([4.0, 4.0], axes=("y", "x"))})
    grid = np.arange(12, size_px - 11, 16, dtype=float)
    centres = np.array([(x, y) for y in grid for x in grid])
    share = np.array([purple[int(y) - 6:int(y) + 6, int(x) - 6:int(x) + 6].mean()
                      for x, y in centres])
    rates = np.column_stack([5 + 40 * share, 3 + 30 * share, 5 + 40 * (1 - share),
                             np.full(len(share), 10.0)])
    counts = np.column_stack([rng.poisson(rates), rng.poisson(20, (len(share), 6))])
    var = pd.DataFrame(index=pd.Index(GENES + [f"G{i}" for i in range(6)]))
    obs = pd.DataFrame(index=pd.Index([f"s{i}" for i in range(len(share))]))
    spots, table = spot_elements(centres + shift_um, counts.astype(np.float32), obs=obs,
                                 var=var, radius_um=6.0)
    return SpatialData(images={"he": he}, labels={"he_tissue": tissue},
                       shapes={"spots": spots}, tables={"table": table})


def snapshot(sdata: SpatialData) -> dict:
    """Element names and contents, to compare a section before and after a call."""
    state = {}
    for kind in ("images", "labels", "points", "shapes", "tables"):
        for key, element in getattr(sdata, kind).items():
            if kind == "tables":
                values = None if element.X is None else element.to_df().to_numpy().copy()
                state[(kind, key)] = (
                    values, element.obs.copy(),
                    sorted(element.obsm), sorted(element.layers), sorted(element.uns))
            elif kind == "shapes":
                state[(kind, key)] = element.copy()
            else:
                state[(kind, key)] = id(element)
    return state


def assert_same(before: dict, after: dict) -> None:
    assert list(before) == list(after)
    for key, old in before.items():
        new = after[key]
        if key[0] == "tables":
            np.testing.assert_array_equal(old[0], new[0])
            pd.testing.assert_frame_equal(old[1], new[1])
            assert old[2:] == new[2:], key
        elif key[0] == "shapes":
            pd.testing.assert_frame_equal(pd.DataFrame(old), pd.DataFrame(new))
        else:
            assert old == new, key


def weights(model) -> np.ndarray:
    return np.concatenate([v.detach().numpy().ravel() for v in model.state_dict().values()])


# --- reused tiles and features record how they were made -------------------------------------

@bad_input("silently wrong", "a second `hx.tl.fit(..., model='spot_regressor')` with another "
           "`mpp` on the same sections",
           says="remakes the tiles and features that the first fit made (logged); the model "
                "learns from features at its own pixel size",
           fix="nothing; to keep both, give each fit its own tiles_key")
def test_refit_at_another_pixel_size_remakes_its_own_tiles(caplog):
    section = make_section()
    first = hx.tl.fit(section, model="spot_regressor", genes=GENES, **PATCH)
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        second = hx.tl.fit(section, model="spot_regressor", genes=GENES, size_um=16.0, mpp=2.0)
    assert "remaking the tiles" in caplog.text
    table = section.tables["spot_tiles_table"]
    assert table.uns["tiles"]["mpp"] == pytest.approx(2.0)
    assert table.uns["embeddings"]["X_handcrafted"]["mpp"] == pytest.approx(2.0)
    assert second.metadata["features"]["mpp"] == pytest.approx(2.0)
    # the second model is the one a first fit at 2 um/px makes, not a copy of the 1 um/px one
    fresh = hx.tl.fit(make_section(), model="spot_regressor", genes=GENES, size_um=16.0,
                      mpp=2.0)
    np.testing.assert_allclose(weights(second), weights(fresh), rtol=1e-5, atol=1e-6)
    assert not np.allclose(weights(second), weights(first))


@bad_input("silently wrong", "`hx.tl.fit(..., model='spot_regressor', mpp=2)` where the user "
           "tiled the spots at 1 um/px under `tiles_key`",
           says="refuses: the tiles were not made for this fit (mpp: at 1 um/px, not 2 um/px), "
                "and histoexpr reuses only tiles made alike",
           fix="pass another tiles_key (the message suggests one)")
def test_users_tiles_made_otherwise_are_refused_and_kept():
    section = make_section()
    hx.pp.tile(section, "he", size_um=16, mpp=1.0, centres="spots", min_tissue=0,
               key_added="spot_tiles")
    before = snapshot(section)
    with pytest.raises(ValueError, match=r"not made for this fit \(mpp: at 1 um/px, not 2 um/px\)"):
        hx.tl.fit(section, model="spot_regressor", genes=GENES, size_um=16.0, mpp=2.0)
    assert_same(before, snapshot(section))
    model = hx.tl.fit(section, model="spot_regressor", genes=GENES, size_um=16.0, mpp=2.0,
                      tiles_key="spot_tiles_2mpp")
    assert model.metadata["features"]["mpp"] == pytest.approx(2.0)


@bad_input("silently wrong", "features under the spot regressor's `features_key` made by "
           "`hx.tl.embed` with another encoder file of the same name",
           says="refuses: obsm[...] was made otherwise (fingerprint: '<digest>', not "
                "'<digest>'), so it is not reused",
           fix="pass another features_key (or tiles_key) to compute matching features")
def test_features_of_another_encoder_under_the_key_are_refused(tmp_path):
    section = make_section()
    path = tmp_path / "encoder.pt"
    torch.manual_seed(0)
    hx.io.save_model(hx.models.TileEncoder(arch="small_cnn", in_channels=3, width=8), path)
    hx.pp.tile(section, "he", size_um=16, mpp=1.0, centres="spots", min_tissue=0,
               key_added="spot_tiles")
    hx.tl.embed(section, "spot_tiles", encoder=str(path))
    torch.manual_seed(1)
    hx.io.save_model(hx.models.TileEncoder(arch="small_cnn", in_channels=3, width=8), path,
                     overwrite=True)  # another encoder, same file name
    kept = section.tables["spot_tiles_table"].obsm["X_encoder"].copy()
    with pytest.raises(ValueError, match="was made otherwise"):
        hx.tl.fit(section, model="spot_regressor", genes=GENES, encoder=str(path),
                  features_key="X_encoder", **PATCH)
    np.testing.assert_array_equal(section.tables["spot_tiles_table"].obsm["X_encoder"], kept)


@bad_input("silently wrong", "`hx.tl.predict` of a spot regressor after its encoder file was "
           "replaced by another",
           says="refuses before writing: the encoder is not the one the model was trained "
                "with (fingerprints differ)",
           fix="give the training encoder's file, or retrain with this encoder")
def test_predict_refuses_a_changed_encoder_file(tmp_path):
    path = tmp_path / "encoder.pt"
    torch.manual_seed(0)
    hx.io.save_model(hx.models.TileEncoder(arch="small_cnn", in_channels=3, width=8), path)
    model = hx.tl.fit(make_section(), model="spot_regressor", genes=GENES, encoder=str(path),
                      **PATCH)
    torch.manual_seed(1)
    hx.io.save_model(hx.models.TileEncoder(arch="small_cnn", in_channels=3, width=8), path,
                     overwrite=True)
    other = make_section(seed=1)
    names = set(other.tables) | set(other.shapes)
    with pytest.raises(ValueError, match="not the one the model was trained with"):
        hx.tl.predict(model, other)
    assert set(other.tables) | set(other.shapes) == names


@bad_input("silently wrong", "`hx.tl.fit(..., model='spot_regressor', encoder='small_cnn')` (an "
           "architecture without weights)",
           says="refuses: the encoder has random weights, different at every call, so "
                "prediction could not make the training features",
           fix="give a trained encoder's model file, 'handcrafted' or 'squidpy'")
def test_random_weight_encoder_is_refused():
    section = make_section()
    with pytest.raises(ValueError, match="random weights"):
        hx.tl.fit(section, model="spot_regressor", genes=GENES, encoder="small_cnn", **PATCH)
    assert "spot_tiles" not in section.shapes


def bagged(seed: int, *, mpp: float) -> SpatialData:
    section = make_section(seed)
    hx.pp.tile(section, "he", size_um=16, mpp=mpp, centres="spots", min_tissue=0,
               key_added="he_tiles")
    hx.tl.embed(section, "he_tiles")
    hx.pp.pseudobulk(section, "he_tiles", size_um=48, stride_um=32, min_spots=3)
    return section


@bad_input("silently wrong", "`hx.tl.predict` of a bag model (abmil, meanpool_ridge) on tile "
           "features of the same encoder made at another pixel size",
           says="refuses: the tile features were made otherwise than the model's training "
                "features (mpp: tiles at 2 um/px, not 1; size_px: tiles of 8 px, not 16)",
           fix="embed the tiles with the training encoder at the training pixel size, under "
               "another key_added, and pass that features_key")
def test_bag_model_refuses_features_made_at_another_pixel_size():
    train = {name: bagged(seed, mpp=1.0) for seed, name in enumerate("ab")}
    network = hx.tl.fit(train, model="meanpool_ridge", genes=GENES[:2])
    assert network.metadata["features_made"]["mpp"] == pytest.approx(1.0)
    other = {"c": bagged(2, mpp=2.0)}  # same encoder, same key, another pixel size
    with pytest.raises(ValueError, match=r"made otherwise than the model's training features "
                       r"\(mpp: tiles at 2 um/px, not 1; size_px: tiles of 8 px, not 16\)"
                       r".*pass that features_key"):
        hx.tl.predict(network, other, key_added="pred")
    assert "pred" not in other["c"].tables["he_tiles_table"].obsm
    mixed = {"a": train["a"], "c": other["c"]}
    with pytest.raises(ValueError, match=r"were made otherwise than those of 'a' \(mpp: tiles "
                       r"at 2 um/px, not 1; size_px"):
        hx.tl.fit(mixed, model="meanpool_ridge", genes=GENES[:2])


def stain_normalised(section: SpatialData, reference: dict, key: str = "X_norm") -> SpatialData:
    """The section's tiles embedded again, stain-normalised onto ``reference``, under ``key``."""
    normaliser = hx.pp.stain_normaliser(section, "he_tiles", reference=reference)
    hx.tl.embed(section, "he_tiles", transform=normaliser, key_added=key)
    return section


@bad_input("silently wrong", "`hx.tl.predict` (or `fit`) of a bag model on tile features made "
           "with another stain normalisation (or none) than the training features",
           says="refuses: the tile features were made otherwise than the model's training "
                "features (transform: macenko (<digest>), not none)",
           fix="embed the tiles with the training stain normalisation (or none), under another "
               "key_added, and pass that features_key")
def test_bag_model_refuses_features_of_another_stain_normalisation():
    sections = {name: bagged(seed, mpp=1.0) for seed, name in enumerate("abc")}
    reference = hx.pp.stain_reference([sections["a"], sections["b"]], "he_tiles")
    for section in sections.values():  # each section mapped from its own stain
        stain_normalised(section, reference)
    plain = hx.tl.fit({n: sections[n] for n in "ab"}, model="meanpool_ridge", genes=GENES[:2],
                      features_key="X_handcrafted")
    assert plain.metadata["features_made"]["transform"] is None
    with pytest.raises(ValueError, match=r"training features \(transform: macenko \(\w+\), "
                       r"not none\).*training stain normalisation"):
        hx.tl.predict(plain, {"c": sections["c"]}, features_key="X_norm", key_added="pred")
    assert "pred" not in sections["c"].tables["he_tiles_table"].obsm
    for name, source in (("a", "X_handcrafted"), ("b", "X_norm")):  # one key, made two ways
        table = sections[name].tables["he_tiles_table"]
        table.obsm["X_mixed"] = table.obsm[source].copy()
        table.uns["embeddings"]["X_mixed"] = dict(table.uns["embeddings"][source])
    with pytest.raises(ValueError, match=r"of section 'b' were made otherwise than those of "
                       r"'a' \(transform: macenko \(\w+\), not none\)"):
        hx.tl.fit({"a": sections["a"], "b": sections["b"]}, model="meanpool_ridge",
                  genes=GENES[:2], features_key="X_mixed")
    # sections normalised onto the same reference are alike, whatever their own stains
    normalised = hx.tl.fit({n: sections[n] for n in "ab"}, model="meanpool_ridge",
                           genes=GENES[:2], features_key="X_norm")
    made = normalised.metadata["features_made"]
    assert made["transform"]["method"] == "macenko" and "source" not in made["transform"]
    assert made["transform"]["reference"]["stain_matrix"] == np.asarray(
        reference["stain_matrix"]).tolist()
    result = hx.tl.predict(normalised, {"c": sections["c"]}, features_key="X_norm",
                           key_added="pred")
    assert result.n_obs > 0 and np.isfinite(np.asarray(result.X)).all()
    assert "pred" in sections["c"].tables["he_tiles_table"].obsm


def test_a_bag_model_of_an_earlier_version_still_predicts_without_a_recorded_transform():
    """A model file whose ``features_made`` was written before the transform was recorded
    (encoder, fingerprint, mpp and size_px only) predicts on features made with one: a field
    its record lacks is not held against it; the fields it has still are."""
    sections = {name: bagged(seed, mpp=1.0) for seed, name in enumerate("abc")}
    network = hx.tl.fit({n: sections[n] for n in "ab"}, model="meanpool_ridge", genes=GENES[:2])
    made = network.metadata["features_made"]
    network.metadata["features_made"] = old = {
        "encoder": str(made["encoder"]), "fingerprint": str(made["fingerprint"]),
        "mpp": float(made["mpp"]), "size_px": int(made["size_px"])}
    reference = hx.pp.stain_reference([sections["a"]], "he_tiles")
    stain_normalised(sections["c"], reference)
    expected = hx.tl.predict(network, {"c": sections["c"]}, features_key="X_handcrafted",
                             key_added="plain")
    result = hx.tl.predict(network, {"c": sections["c"]}, features_key="X_norm",
                           key_added="pred")
    assert result.shape == expected.shape and np.isfinite(np.asarray(result.X)).all()
    assert not np.allclose(np.asarray(result.X), np.asarray(expected.X))  # other features
    network.metadata["features_made"] = {**old, "size_px": old["size_px"] * 2}
    with pytest.raises(ValueError, match=r"\(size_px: tiles of 16 px, not 32\)"):
        hx.tl.predict(network, {"c": sections["c"]}, features_key="X_norm", key_added="pred2")


# --- evaluate pairs by identity -------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    return hx.tl.fit({"a": make_section(0), "b": make_section(1)}, model="spot_regressor",
                     genes=GENES, **PATCH)


def spot_prediction(model, section, key="pred"):
    if "spot_tiles" not in section.shapes:
        hx.pp.tile(section, "he", size_um=16, mpp=1.0, centres="spots", min_tissue=0,
                   key_added="spot_tiles")
    return hx.tl.predict(model, section, tiles_key="spot_tiles", key_added=key, overwrite=True)


@bad_input("silently wrong", "`hx.tl.evaluate` of section A's predictions against section B's "
           "truth (same spot ids)",
           says="refuses: the table was predicted on another image than this section's: it "
                "belongs to another section",
           fix="evaluate in the SpatialData it was predicted on, or predict on this section")
def test_evaluate_refuses_another_sections_prediction(trained):
    a, c = make_section(0), make_section(2)
    spot_prediction(trained, c)
    own = hx.tl.evaluate(c, "pred", "table")
    assert own.loc[["ERBB2", "KRT8", "COL1A1"], "pearson"].mean() > 0.5  # it learned
    c.tables["from_a"] = spot_prediction(trained, a).copy()
    with pytest.raises(ValueError, match="predicted on another image"):
        hx.tl.evaluate(c, "from_a", "table")


@bad_input("silently wrong", "`hx.tl.evaluate` where the truth's spots, with the same "
           "`spot_id`s, lie elsewhere than the predicted tiles (spots moved or re-registered "
           "after predicting)",
           says="refuses: N of M spots paired by spot_id lie elsewhere than their predicted tile",
           fix="predict on this section's spots (tiles centred on the spots the truth annotates)")
def test_evaluate_pairs_spots_by_place_not_by_id_alone(trained):
    c = make_section(2)
    spot_prediction(trained, c)
    c.shapes["spots"] = make_section(2, shift_um=5.0).shapes["spots"]  # same ids, 5 um away
    with pytest.raises(ValueError, match="81 of 81 spots paired by spot_id lie elsewhere"):
        hx.tl.evaluate(c, "pred", "table")


# --- tiles off the image --------------------------------------------------------------------

@bad_input("silently wrong", "spot tiles lying wholly off the image, embedded or predicted",
           says="warns: 'N of M tiles lie wholly off the image: they have no pixels, so their "
                "features are NaN'; predict leaves them out (warned)",
           fix="drop those spots, or check the spots' coordinates")
def test_tiles_off_the_image_are_counted_and_left_out(trained, caplog):
    section = make_section(2)
    spots = section.shapes["spots"]
    spots.loc[spots.index[:3], "geometry"] = [spots.geometry.iloc[0].__class__(-50.0, -50.0)] * 3
    hx.pp.tile(section, "he", size_um=16, mpp=1.0, centres="spots", min_tissue=0,
               key_added="spot_tiles")
    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        hx.tl.embed(section, "spot_tiles")
    assert f"3 of {len(spots)} tiles 'spot_tiles' lie wholly off the image" in caplog.text
    features = section.tables["spot_tiles_table"].obsm["X_handcrafted"]
    assert np.isnan(features[:3]).all() and np.isfinite(features[3:]).all()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="histoexpr"):
        table = hx.tl.predict(trained, section, tiles_key="spot_tiles", key_added="pred")
    assert "left out of the predictions" in caplog.text
    assert table.n_obs == len(spots) - 3 and np.isfinite(table.X).all()
    assert not set(table.obs["spot_id"]) & set(spots.index[:3])


# --- obscure errors made clear -----------------------------------------------------------------

@bad_input("obscure error", "`hx.tl.predict` of an RGB-trained model on a grey, RGBA or DAPI "
           "image",
           says="refuses before writing: the model was trained on 3-channel images but "
                "sdata.images['he'] has 1 (or 4) channel(s)",
           fix="predict on an image of the training kind (image_key=), or train on this kind")
@pytest.mark.parametrize("channels", [1, 4])
def test_predict_checks_channels_before_writing(trained, channels):
    section = make_section(3, channels=channels)
    before = snapshot(section)
    with pytest.raises(ValueError, match=f"3-channel images .* has {channels} channel"):
        hx.tl.predict(trained, section)
    assert_same(before, snapshot(section))


@bad_input("obscure error", "`hx.tl.predict('model.pt', sdata)` (a model file, as the docs "
           "allow)",
           says="accepted: the file is read with hx.io.load_model",
           fix="nothing")
def test_predict_takes_a_model_file(trained, tmp_path):
    path = hx.io.save_model(trained, tmp_path / "model.pt")
    section = make_section(2)
    from_file = hx.tl.predict(str(path), section, key_added="from_file")
    from_network = hx.tl.predict(trained, section, key_added="from_network")
    np.testing.assert_allclose(from_file.X, from_network.X, rtol=1e-5, atol=1e-6)


@bad_input("obscure error", "`hx.tl.evaluate(sdata, 'pred', 'truth')` with a key that does not "
           "exist",
           says="KeyError: truth_key='truth' is not an element of the SpatialData; its tables "
                "are 'table' and its label maps 'he_tissue'. Pass one of them",
           fix="pass one of the keys named")
def test_evaluate_names_a_missing_key_and_the_available_ones():
    section = make_section()
    with pytest.raises(KeyError, match="truth_key='truth' is not an element.*'table'"):
        hx.tl.evaluate(section, "table", "truth")
    with pytest.raises(KeyError, match="pred_key='pred' is not an element.*'table'"):
        hx.tl.evaluate(section, "pred", "table")


@bad_input("obscure error", "a text file given as a model or checkpoint (`hx.tl.predict("
           "'notes.txt', ...)`, `hx.io.load_model`, `embed(checkpoint=...)`)",
           says="'<file> is not a readable torch file (it is empty, damaged, or a file of "
                "another kind such as text)' instead of `KeyError: 101`",
           fix="give the model file written by hx.io.save_model")
def test_text_file_as_a_model_is_named(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("experiment notes\nnot a model\n")
    section = make_section()
    for call in (lambda: hx.io.load_model(notes), lambda: hx.tl.predict(str(notes), section),
                 lambda: hx.tl.embed(section, "spot_tiles", encoder="small_cnn",
                                     checkpoint=notes)):
        if "spot_tiles" not in section.shapes:
            hx.pp.tile(section, "he", size_um=16, mpp=1.0, key_added="spot_tiles")
        with pytest.raises(ValueError, match="notes.txt is not a readable torch file"):
            call()


class Payload:
    """Not a weights file: unpickling it would run code (it writes a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@bad_input("obscure error", "`hx.tl.embed(checkpoint='evil.pt')`, a pickle holding a custom "
           "object",
           says="refuses: the file is not a plain weights file and is refused for safety (no "
                "torch advice to turn off weights-only loading)",
           fix="use a checkpoint holding weights only (a state dict saved with torch.save)")
def test_pickled_object_checkpoint_is_refused_without_torchs_advice(tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": Payload(marker)}, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    section = make_section()
    hx.pp.tile(section, "he", size_um=16, mpp=1.0, key_added="t")
    with pytest.raises(ValueError, match="not a plain weights file") as caught:
        hx.tl.embed(section, "t", encoder="small_cnn", checkpoint=evil)
    error = caught.value
    assert "refused for safety" in str(error)
    assert "weights_only=" + "False" not in str(error)  # torch's advice is never passed on
    assert error.__cause__ is None and error.__suppress_context__  # torch's text not chained
    assert not marker.exists()
    assert "X_small_cnn" not in section.tables["t_table"].obsm


@bad_input("obscure error", "`genes='ERBB2'` (one gene as a string)",
           says="taken as one gene (it was split into its letters: 'E', 'R', 'B'...)",
           fix="nothing")
def test_a_single_gene_name_is_one_gene():
    section = make_section()
    assert hx.pp.select_genes(section.tables["table"], genes="ERBB2") == ["ERBB2"]
    model = hx.tl.fit(section, model="spot_regressor", genes="ERBB2", **PATCH)
    assert model.metadata["genes"] == ["ERBB2"]
    table = section.tables["table"]
    frame = hx.tl.gene_correlations(table, table, genes="ERBB2")
    assert list(frame.index) == ["ERBB2"] and frame["pearson"].iloc[0] == pytest.approx(1.0)
    spot_prediction(model, section)
    assert list(hx.tl.evaluate(section, "pred", "table", genes="ERBB2").index) == ["ERBB2"]


@bad_input("obscure error", "`help(hx.tl.fit)` / `hx.tl.cross_validate?` naming `hx.tl.MODELS` "
           "and `hx.tl.CROSS_VALIDATORS`, which do not exist",
           says="the docstrings list the model names themselves",
           fix="nothing")
def test_docstrings_name_the_models_not_missing_attributes():
    import re

    from histoexpr.tl._api import CROSS_VALIDATORS, MODELS

    for function, names in ((hx.tl.fit, MODELS), (hx.tl.cross_validate, CROSS_VALIDATORS)):
        doc = function.__doc__
        assert "MODELS" not in doc and "CROSS_VALIDATORS" not in doc
        assert all(f'"{name}"' in doc for name in names), function.__name__
    for name in hx.tl.__all__:
        for mentioned in re.findall(r"hx\.tl\.(\w+)|histoexpr\.tl\.(\w+)",
                                    getattr(hx.tl, name).__doc__ or ""):
            attribute = next(m for m in mentioned if m)
            assert hasattr(hx.tl, attribute), (name, attribute)


# --- cross-validation leaves the user's sections alone ----------------------------------------

@bad_input("data lost", "`hx.tl.cross_validate(sections, model='spot_regressor')` where a "
           "section holds a table of the user's named `cv_expression`",
           says="the user's sections are left as they were: tiles, features and predictions go "
                "into private copies (the table was overwritten, then deleted)",
           fix="nothing")
def test_cross_validate_leaves_the_users_sections_unchanged():
    sections = {name: make_section(seed) for seed, name in enumerate("abc")}
    mine = ad.AnnData(X=np.arange(12, dtype=np.float32).reshape(3, 4))
    sections["c"].tables["cv_expression"] = mine
    before = {name: snapshot(section) for name, section in sections.items()}
    frame = hx.tl.cross_validate(sections, model="spot_regressor", n_genes=3,
                                 gene_flavor="top_expressed", groups={"a": "p", "b": "p",
                                                                      "c": "q"}, **PATCH)
    assert set(frame["section"]) == {"a", "b", "c"}
    for name, section in sections.items():
        assert_same(before[name], snapshot(section))
    assert sections["c"].tables["cv_expression"] is mine
    np.testing.assert_array_equal(mine.X, np.arange(12).reshape(3, 4))


# --- fit checks every option before it tiles a section ----------------------------------------

def _element_keys(sdata) -> set[str]:
    return {f"{kind}/{key}" for kind, key, _ in sdata.gen_elements()}


@bad_input("data lost", "`hx.tl.fit(..., model='spot_regressor')` with `encoder='nope'`, "
           "`device='gpu'`, `genes=[]` or `genes=0`: the tissue map and spot tiles were added "
           "to every section before the option was refused",
           says="ValueError: `Unknown encoder 'nope'` / `device='gpu' is not a device` / "
                "`genes is empty` / `genes must be an integer in [1, inf]`, before a section "
                "is tiled",
           fix="fix the option as the message says",
           match=r"Unknown encoder 'nope'|device='gpu' is not a device|genes is empty|"
                 r"genes must be an integer in \[1, inf\]|tiles_key='my tiles' cannot name")
@pytest.mark.parametrize(("bad", "said"), [
    ({"encoder": "nope"}, "Unknown encoder 'nope'"),
    ({"device": "gpu"}, "device='gpu' is not a device"),
    ({"genes": []}, "genes is empty"),
    ({"genes": 0}, r"genes must be an integer in \[1, inf\]"),
    ({"tiles_key": "my tiles"}, "tiles_key='my tiles' cannot name an element"),
])
def test_fit_refuses_a_bad_option_before_it_tiles_a_section(bad, said):
    sections = {"a": make_section(0), "b": make_section(1)}
    before = {name: _element_keys(s) for name, s in sections.items()}
    with pytest.raises(ValueError, match=said):
        hx.tl.fit(sections, model="spot_regressor", **{"genes": GENES, **PATCH, **bad})
    assert {name: _element_keys(s) for name, s in sections.items()} == before


@bad_input("data lost", "`hx.tl.fit(..., model='spot_regressor', encoder='missing.pt')` (an "
           "encoder file that is not there): the sections were tiled before it was refused",
           says="FileNotFoundError: `No model file at ...missing.pt`, before a section is tiled",
           fix="give the path of the encoder's model file")
def test_fit_refuses_a_missing_encoder_file_before_it_tiles_a_section(tmp_path):
    sections = {"a": make_section(0), "b": make_section(1)}
    before = {name: _element_keys(s) for name, s in sections.items()}
    with pytest.raises(FileNotFoundError, match="No model file at .*missing.pt"):
        hx.tl.fit(sections, model="spot_regressor", genes=GENES,
                  encoder=str(tmp_path / "missing.pt"), **PATCH)
    assert {name: _element_keys(s) for name, s in sections.items()} == before


@bad_input("data lost", "`hx.tl.fit(..., features_key='a/b')` or `hx.tl.embed(..., "
           "key_added='x/y')` (a key with '/' in obsm: the section's own `sdata.write` failed "
           "later, or nested it)",
           says="ValueError: `features_key='a/b' cannot name a set of features in the tile "
                "table's obsm: it holds a path separator`",
           fix="use one plain name (letters, digits, '_', '-', '.', '+')")
def test_a_features_key_must_be_one_plain_name():
    section = make_section()
    before = snapshot(section)
    with pytest.raises(ValueError, match="features_key='a/b' cannot name a set of features in "
                                         "the tile table's obsm: it holds a path separator"):
        hx.tl.fit(section, model="spot_regressor", genes=GENES, features_key="a/b", **PATCH)
    assert_same(before, snapshot(section))
    hx.pp.tile(section, "he", size_um=16, mpp=1.0, centres="spots", min_tissue=0,
               key_added="spot_tiles")
    table = section.tables["spot_tiles_table"]
    with pytest.raises(ValueError, match="key_added='x/y' cannot name"):
        hx.tl.embed(section, "spot_tiles", key_added="x/y")
    assert list(table.obsm) == ["spatial"] and "embeddings" not in table.uns


def test_the_default_features_key_of_a_model_file_is_one_plain_name(tmp_path):
    from histoexpr.tl._spot._spot_regressor import default_features_key

    path = tmp_path / "my encoder.pt"
    torch.manual_seed(0)
    hx.io.save_model(hx.models.TileEncoder(arch="small_cnn", in_channels=3, width=8), path)
    section = make_section()
    model = hx.tl.fit(section, model="spot_regressor", genes=GENES, encoder=str(path), **PATCH)
    # before, the whole path: obsm['X_/tmp/.../my encoder.pt'], which sdata.write cannot save
    assert model.metadata["features_key"] == "X_my encoder"
    assert "X_my encoder" in section.tables["spot_tiles_table"].obsm
    assert default_features_key("squidpy:texture") == "X_squidpy_texture"
    assert default_features_key(["squidpy", "handcrafted"]) == "X_squidpy+handcrafted"
    assert default_features_key("hf:/models/phikon/") == "X_hf_phikon"


@bad_input("obscure error", "`hx.tl.evaluate(None, ...)` or `hx.tl.evaluate(sdata, ..., "
           "genes=5)` (AttributeError deep inside; 'int' object is not iterable)",
           says="TypeError: `sdata must be a SpatialData` / `genes must be gene names, got 5`",
           fix="pass the SpatialData, and gene names (a name or a list)",
           match="sdata must be a SpatialData|genes must be gene names")
def test_evaluate_names_a_wrong_sdata_or_genes(trained):
    section = make_section(2)
    spot_prediction(trained, section)
    with pytest.raises(TypeError, match="sdata must be a SpatialData .* got a NoneType"):
        hx.tl.evaluate(None, "pred", "table")
    for genes in (5, ["ERBB2", 5]):
        with pytest.raises(TypeError, match="genes must be gene names"):
            hx.tl.evaluate(section, "pred", "table", genes=genes)
    with pytest.raises(ValueError, match="genes is empty"):
        hx.tl.evaluate(section, "pred", "table", genes=[])
    assert list(hx.tl.evaluate(section, "pred", "table", genes="ERBB2").index) == ["ERBB2"]
