"""route="auto" of the spot regressor chooses on the training sections only, and stain
normalisation makes a stain-shifted section look like the original to the features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _catalogue import bad_input
from spatialdata import SpatialData

import histoexpr as hx
from histoexpr.tl._spot import _spot_auto

PATCH = {"size_um": 40.0, "mpp": 1.0}
GENES = ["EPCAM", "KRT8", "COL1A1", "DCN", "PTPRC", "CD3E", "CDH1", "PIGR", "MKI67"]
#: a small grid: cheap features, every kind of option
GRID = {"encoder": ["handcrafted"], "stain": ["none"], "standardise_sections": [True, False],
        "context_um": [None, 60.0], "target": ["log1p", "centred", "rank"], "head": ["ridge"]}


@pytest.fixture(scope="module")
def trio(synthetic):
    """Three small synthetic sections: a, b to train, c held out."""
    sections = {name: synthetic(seed=seed, size_um=500, spot_pitch_um=40,
                                spot_diameter_um=35)
                for seed, name in enumerate("abc")}
    for sdata in sections.values():
        hx.pp.tile(sdata, "he", size_um=40, mpp=1.0, centres="spots", min_tissue=0,
                   key_added="spot_tiles")
    return sections


def held_out(model, sdata, key="pred"):
    hx.tl.predict(model, sdata, tiles_key="spot_tiles", key_added=key, overwrite=True)
    return hx.tl.evaluate(sdata, key, "table")


def test_auto_chooses_by_inner_folds_of_the_training_sections_only(trio, monkeypatch):
    trained_on, scored_on = [], []
    fit_head, pearson = _spot_auto._fit_head, _spot_auto.column_pearson

    def spy_fit(features, targets, candidate, options):
        trained_on.append({row.tobytes() for t in targets for row in np.asarray(t)})
        return fit_head(features, targets, candidate, options)

    def spy_pearson(predicted, truth):
        scored_on.append({row.tobytes() for row in np.asarray(truth)})
        return pearson(predicted, truth)

    monkeypatch.setattr(_spot_auto, "_fit_head", spy_fit)
    monkeypatch.setattr(_spot_auto, "column_pearson", spy_pearson)
    train = {n: trio[n] for n in "ab"}
    model = hx.tl.fit(train, model="spot_regressor", route="auto", genes=GENES,
                      candidates=GRID, tiles_key="spot_tiles", seed=0, **PATCH)
    auto = model.metadata["auto"]
    # coordinate-wise: 1 start + 1 + 1 + 2 other values of the searched options
    assert len(auto["search"]) == 5
    assert auto["inner_folds"] == "leave-one-section-out"
    assert all(set(entry["folds"]) == {"a", "b"} for entry in auto["search"])
    assert set(auto["chosen"]) == set(_spot_auto.AUTO_GRID)
    best = max(auto["search"], key=lambda entry: entry["mean"])
    assert best["candidate"] == auto["chosen"]
    assert model.metadata["target"] == auto["chosen"]["target"]
    # every inner fit's targets and the spots it is scored on never overlap; the held-out
    # section c is never read (its spots are in no training or scoring set)
    c_rows = {row.tobytes() for row in hx.pp.expression_targets(trio["c"].tables["table"], GENES)}
    fits_in_search = trained_on[:len(scored_on)]
    assert len(scored_on) == 2 * len(auto["search"])
    for training, scored in zip(fits_in_search, scored_on, strict=True):
        assert not training & scored
        assert not (training | scored) & c_rows


def test_auto_beats_the_mean_predictor_on_a_held_out_section(trio):
    train = {n: trio[n] for n in "ab"}
    model = hx.tl.fit(train, model="spot_regressor", route="auto", genes=GENES,
                      candidates=GRID, tiles_key="spot_tiles", seed=0, **PATCH)
    scores = held_out(model, trio["c"])
    assert scores["pearson"].mean() > 0.5
    predicted = trio["c"].tables["pred"]
    truth = hx.pp.expression_targets(trio["c"].tables["table"], GENES)
    order = predicted.obs["spot_id"].map({s: i for i, s in
                                          enumerate(trio["c"].tables["table"].obs["spot_id"])})
    truth = truth[order.to_numpy()]
    mean = np.vstack([hx.pp.expression_targets(s.tables["table"], GENES)
                      for s in train.values()]).mean(axis=0)
    model_error = ((np.asarray(predicted.X) - truth) ** 2).mean()
    mean_error = ((mean - truth) ** 2).mean()
    assert model_error < 0.8 * mean_error, (model_error, mean_error)


def test_one_section_is_searched_on_spatial_bands(trio):
    model = hx.tl.fit(trio["a"], model="spot_regressor", route="auto", genes=GENES[:4],
                      candidates={**GRID, "target": ["log1p"], "context_um": [None]},
                      tiles_key="spot_tiles", seed=0, **PATCH)
    auto = model.metadata["auto"]
    assert auto["inner_folds"] == "three spatial bands of one section"
    assert len(auto["search"][0]["folds"]) == 3
    assert held_out(model, trio["c"])["pearson"].mean() > 0.3


def test_a_cnn_encoder_file_travels_inside_the_model(trio, tmp_path):
    torch.manual_seed(0)
    encoder = hx.models.TileEncoder(**{**_spot_auto.CNN_CONFIG, "width": 8})
    encoder.metadata = {"normalisation": {"mean": 0.5, "std": 0.25}}
    path = hx.io.save_model(encoder, tmp_path / "encoder.pt")
    train = {n: trio[n] for n in "ab"}
    model = hx.tl.fit(train, model="spot_regressor", route="ridge", encoder="ssl",
                      ssl_encoder=path, genes=GENES, tiles_key="spot_tiles", **PATCH)
    assert isinstance(model, hx.models.EncoderHead)
    assert model.metadata["encoder"] == "ssl" and model.metadata["route"] == "ridge"
    first = held_out(model, trio["c"])["pearson"].mean()
    assert first > 0.3
    loaded = hx.io.load_model(hx.io.save_model(model, tmp_path / "model.pt"))
    values = trio["c"].tables["pred"].X.copy()
    held_out(loaded, trio["c"])
    np.testing.assert_allclose(trio["c"].tables["pred"].X, values, rtol=1e-4, atol=1e-5)


def test_a_head_route_on_a_cnn_encoder_is_searched_with_its_own_options():
    from dataclasses import fields

    from histoexpr.tl._spot._spot_regressor import _one_configuration

    mlp = hx.tl.SpotRegressorOptions(
        route="mlp", encoder="random_cnn", hidden=16, n_members=2, epochs=3, lr=0.01,
        val_fraction=0.3, context_um=60.0, standardise_sections=True, seed=4, batch_size=8,
        calibrate=False, tiles_key="t", pretrain_epochs=2, genes=GENES)
    auto = _one_configuration(mlp)
    assert type(auto) is hx.tl.AutoRouteOptions
    assert auto.candidates == {"encoder": ["random_cnn"], "stain": ["none"],
                               "standardise_sections": [True], "context_um": [60.0],
                               "target": ["log1p"], "head": ["mlp"]}
    shared = {f.name for f in fields(hx.tl.MLPRouteOptions)} & {
        f.name for f in fields(hx.tl.AutoRouteOptions)}
    assert {"hidden", "n_members", "epochs", "lr", "val_fraction", "seed"} <= shared
    for name in shared - {"route"}:  # every option of the route is carried over
        assert getattr(auto, name) == getattr(mlp, name), name
    ridge = _one_configuration(hx.tl.SpotRegressorOptions(route="ridge", encoder="ssl",
                                                          alphas=[2.0]))
    assert ridge.alphas == [2.0] and ridge.candidates["head"] == ["ridge"]
    assert ridge.candidates["context_um"] == [None]


def stain_shifted(sdata) -> SpatialData:
    """The section's image with other stain colours (haematoxylin bluer and weaker, eosin
    stronger), made in optical density as a scanner or a staining batch would."""
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import get_transformation

    image = sdata.images["he"]
    tiles = sdata.tables["spot_tiles_table"].copy()
    for key in [k for k in tiles.obsm if k != "spatial"]:
        del tiles.obsm[key]  # features of the original's pixels
    tiles.uns.pop("embeddings", None)
    pixels = np.asarray(image.values, dtype=np.float64)
    density = -np.log((pixels + 1) / 240)
    mix = np.array([[0.75, 0.10, 0.05], [0.05, 1.25, 0.10], [0.15, 0.05, 0.95]])
    shifted = np.clip(240 * np.exp(-np.einsum("dc,chw->dhw", mix, density)) - 1, 0, 255)
    copy = Image2DModel.parse(shifted.round().astype(np.uint8), dims=("c", "y", "x"),
                              c_coords=list(image.coords["c"].values),
                              transformations=get_transformation(image, get_all=True))
    return SpatialData(images={"he": copy}, shapes={"spots": sdata.shapes["spots"],
                                                    "spot_tiles": sdata.shapes["spot_tiles"]},
                       labels=dict(sdata.labels),
                       tables={"table": sdata.tables["table"],
                               "spot_tiles_table": tiles})


def test_stain_normalisation_removes_most_of_a_stain_shift(trio):
    section = trio["c"]
    shifted = stain_shifted(section)
    reference = hx.pp.stain_reference([trio["a"], trio["b"]], "spot_tiles")
    assert np.asarray(reference["stain_matrix"]).shape == (3, 2)

    def features(sdata, key, transform=None):
        hx.tl.embed(sdata, "spot_tiles", encoder="handcrafted", key_added=key,
                    transform=transform, overwrite=True)
        return sdata.tables["spot_tiles_table"].obsm[key]

    raw, raw_shifted = features(section, "X_raw"), features(shifted, "X_raw")
    normalised = features(section, "X_norm", hx.pp.stain_normaliser(section, "spot_tiles",
                                                                     reference=reference))
    normalised_shifted = features(shifted, "X_norm", hx.pp.stain_normaliser(
        shifted, "spot_tiles", reference=reference))
    scale = raw.std(axis=0) + 1e-6
    shift_before = np.abs((raw - raw_shifted) / scale).mean()
    shift_after = np.abs((normalised - normalised_shifted) / scale).mean()
    assert shift_after < 0.5 * shift_before, (shift_before, shift_after)
    record = shifted.tables["spot_tiles_table"].uns["embeddings"]["X_norm"]
    assert record["transform"]["method"] == "macenko"


@pytest.mark.filterwarnings(  # the shifted section is out of range, on purpose
    "ignore:Slide .* lie out of the training data.s range:UserWarning")
@pytest.mark.slow
def test_stain_normalised_model_predicts_a_shifted_section_nearly_as_the_original(trio):
    train = {n: trio[n] for n in "ab"}
    shifted = stain_shifted(trio["c"])
    gaps = {}
    for stain in ("none", "macenko"):
        model = hx.tl.fit(train, model="spot_regressor", route="auto", genes=GENES,
                          candidates={**GRID, "stain": [stain], "standardise_sections": [False],
                                      "context_um": [None], "target": ["log1p"]},
                          tiles_key="spot_tiles", seed=0, **PATCH)
        assert (model.metadata["stain"] is None) == (stain == "none")
        held_out(model, trio["c"], key=f"pred_{stain}")
        original = np.asarray(trio["c"].tables[f"pred_{stain}"].X)
        held_out(model, shifted, key=f"pred_{stain}")
        gaps[stain] = np.abs(np.asarray(shifted.tables[f"pred_{stain}"].X) - original).mean()
    assert gaps["macenko"] < 0.5 * gaps["none"], gaps


@bad_input("silently wrong", "`candidates=` with an option `route='auto'` does not choose, or "
           "with another route; `route='auto'` with a fixed `context_um=` or `encoder=`",
           says="ValueError naming the options it chooses / asking for route='auto' / for "
           "candidates=", fix="give the values to choose from as `candidates=`; pass "
           "`route='auto'`")
def test_unknown_candidates_are_refused(trio):
    options = {"model": "spot_regressor", "genes": GENES[:3], "tiles_key": "spot_tiles", **PATCH}
    with pytest.raises(ValueError, match="route='auto' chooses"):
        hx.tl.fit(trio["a"], route="auto", candidates={"arch": ["resnet18"]}, **options)
    with pytest.raises(ValueError, match="choose from"):
        hx.tl.fit(trio["a"], route="auto", candidates={"target": ["zscore"]}, **options)
    with pytest.raises(ValueError, match="chooses the encoder"):
        hx.tl.fit(trio["a"], route="auto", context_um=100.0, **options)
    with pytest.raises(ValueError, match="pass route='auto'"):
        hx.tl.fit(trio["a"], route="ridge", candidates={"target": ["rank"]}, **options)


@pytest.mark.slow
def test_ssl_encoder_is_pretrained_inside_fit_on_the_training_sections(trio):
    train = {n: trio[n] for n in "ab"}
    for sdata in train.values():
        if "grid16" not in sdata.shapes:
            hx.pp.tile(sdata, "he", size_px=16, mpp=1.0, stride_px=16, min_tissue=0.5,
                       key_added="grid16")
    model = hx.tl.fit(train, model="spot_regressor", route="ridge", encoder="ssl",
                      pretrain_tiles_key="grid16", pretrain_epochs=1, genes=GENES,
                      tiles_key="spot_tiles", seed=0, **PATCH)
    assert model.metadata["encoder_pretraining"]["n_sections"] == 2
    assert held_out(model, trio["c"])["pearson"].mean() > 0.3


def test_the_default_grid_is_the_one_documented():
    doc = " ".join(hx.tl.AutoRouteOptions.__doc__.split())  # candidates: the auto route's
    for option, values in _spot_auto.AUTO_GRID.items():
        assert f'"{option}": [' in doc
        for value in values:
            text = (f'"{value}"' if isinstance(value, str) else
                    str([int(v) for v in value]) if isinstance(value, tuple) else str(value))
            assert text in doc, (option, text)


def without_features(sdata) -> SpatialData:
    """A light copy of a section whose tile table holds no features (they are made anew)."""
    tables = {key: table.copy() for key, table in sdata.tables.items()}
    tiles = tables["spot_tiles_table"]
    for key in [k for k in tiles.obsm if k != "spatial"]:
        del tiles.obsm[key]
    tiles.uns.pop("embeddings", None)
    return SpatialData(images=dict(sdata.images), labels=dict(sdata.labels),
                       shapes=dict(sdata.shapes), tables=tables)


def squidpy_reference(image, groups=("summary", "histogram", "texture")):
    """squidpy's own features of one tile, through its ImageContainer (the recipe's source)."""
    import warnings

    import squidpy as sq

    container = sq.im.ImageContainer(image, layer="image")
    values = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        for group in groups:
            values.update(getattr(container, f"features_{group}")("image"))
    return values


@pytest.mark.slow
def test_cached_features_choose_and_predict_as_computing_them_every_time(trio, monkeypatch):
    """Features are made once per section, encoder, stain, context and scaling, and squidpy's
    features are computed from one normalised co-occurrence matrix: the search chooses the same
    and the model predicts the same as computing every candidate's features anew for every
    inner fold with squidpy's own ImageContainer."""
    pytest.importorskip("squidpy")
    from histoexpr.tl._features import _squidpy_features
    from histoexpr.tl._spot import _spot_features

    grid = {**GRID, "encoder": ["handcrafted", "squidpy+handcrafted"], "target": ["log1p", "rank"]}
    options = {"model": "spot_regressor", "route": "auto", "genes": GENES, "candidates": grid,
               "tiles_key": "spot_tiles", "seed": 0, **PATCH}
    made = []
    compute = _spot_features.section_features

    def counted(sdata, tiles_key, **kwargs):
        made.append(kwargs["features_key"])
        return compute(sdata, tiles_key, **kwargs)

    monkeypatch.setattr(_spot_features, "section_features", counted)
    cached = hx.tl.fit({n: without_features(trio[n]) for n in "ab"}, **options)
    n_cached = len(made)
    made.clear()
    monkeypatch.setattr(_spot_auto._Features, "all_tiles", _spot_auto._Features._compute)
    monkeypatch.setattr(_squidpy_features, "squidpy_tile_features", squidpy_reference)
    uncached = hx.tl.fit({n: without_features(trio[n]) for n in "ab"}, **options)

    auto, again = cached.metadata["auto"], uncached.metadata["auto"]
    assert auto["chosen"] == again["chosen"]
    assert "squidpy+handcrafted" in {e["candidate"]["encoder"] for e in auto["search"]}
    assert [e["candidate"] for e in auto["search"]] == [e["candidate"] for e in again["search"]]
    np.testing.assert_allclose([e["mean"] for e in auto["search"]],
                               [e["mean"] for e in again["search"]], rtol=1e-6, atol=1e-7)
    # once per section and distinct (encoder, stain, context, scaling) with the cache; per
    # section, fold and candidate without it
    distinct = {(e["candidate"]["encoder"], repr(e["candidate"]["context_um"]),
                 e["candidate"]["standardise_sections"]) for e in auto["search"]}
    assert n_cached == 2 * len(distinct)
    assert len(made) > 2 * n_cached
    section = without_features(trio["c"])
    first = np.asarray(hx.tl.predict(cached, section, tiles_key="spot_tiles", key_added="p").X)
    second = np.asarray(hx.tl.predict(uncached, without_features(trio["c"]),
                                      tiles_key="spot_tiles", key_added="p").X)
    np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-5)


def test_squidpy_features_equal_squidpys_own(trio):
    pytest.importorskip("squidpy")
    from histoexpr.tl._features._squidpy_features import squidpy_tile_features

    rng = np.random.default_rng(0)
    tiles = [np.moveaxis(hx.pp.TileDataset(trio["a"], "spot_tiles").pixels(i), 0, -1)
             for i in (0, 5)]
    tiles += [np.full((20, 20, 3), 7, np.uint8),  # flat: correlation 1 by definition
              rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)]
    for image in tiles:
        expected, got = squidpy_reference(image), squidpy_tile_features(image)
        assert list(got) == list(expected)
        np.testing.assert_allclose([got[k] for k in expected], list(expected.values()),
                                   rtol=1e-12, atol=1e-12)
