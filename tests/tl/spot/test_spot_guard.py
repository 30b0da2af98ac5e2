"""The spot regressor's calibration: domain-shift guard, conformal intervals, output record."""

from __future__ import annotations

import logging
import re
import warnings

import numpy as np
import pytest
from _catalogue import bad_input
from conftest import without_pixel_size
from spatialdata import SpatialData
from spatialdata.models import Image2DModel

import histoexpr as hx

PATCH = {"size_um": 40.0, "mpp": 1.0}
GENES = ["EPCAM", "KRT8", "COL1A1", "DCN", "PTPRC", "CD3E", "CDH1", "PIGR", "MKI67"]


@pytest.fixture(scope="module")
def sections(synthetic):
    """Four small sections of one kind: three to train, d held out."""
    hx.settings.progress_bar = False
    return {
        name: synthetic(
            seed=seed, size_um=400, spot_pitch_um=40, spot_diameter_um=35
        )
        for seed, name in enumerate("abcd")
    }


@pytest.fixture(scope="module")
def model(sections):
    return hx.tl.fit(
        {n: sections[n] for n in "abc"}, model="spot_regressor", route="ridge", genes=GENES, **PATCH
    )


@pytest.fixture(scope="module")
def uncalibrated(sections):
    """A ridge model trained with calibrate=False (as a model file of an earlier version)."""
    return hx.tl.fit(
        {n: sections[n] for n in "ab"},
        model="spot_regressor",
        route="ridge",
        genes=GENES[:3],
        calibrate=False,
        **PATCH,
    )


def spot_tiles(sdata, key: str = "spot_tiles") -> str:
    if key not in sdata.shapes:
        hx.pp.tile(
            sdata,
            "he",
            size_um=PATCH["size_um"],
            mpp=PATCH["mpp"],
            centres="spots",
            min_tissue=0,
            key_added=key,
        )
    return key


def grid(sdata, key: str = "grid") -> str:
    if key not in sdata.shapes:
        hx.pp.tile(
            sdata, "he", size_um=PATCH["size_um"], mpp=PATCH["mpp"], min_tissue=0.5, key_added=key
        )
    return key


def recoloured(sdata) -> SpatialData:
    """The section's image with its colours turned (a stain and tissue unlike the training)."""
    image = sdata.images["he"]
    level = image["scale0"]["image"] if hasattr(image, "children") else image
    data = np.asarray(level.values)
    other = np.stack([255 - data[2], data[0] // 2, 255 - data[1]]).astype(np.uint8)
    parsed = Image2DModel.parse(
        other,
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        transformations=dict(level.attrs["transform"]),
    )
    return SpatialData(images={"he": parsed}, labels=carried_over(sdata.labels))


def carried_over(labels) -> dict:
    """Tissue maps carried over to another image of the same section, as a user's own maps.

    A map keeps the record of the image detect_tissue found it on, and tile refuses it on other
    pixels; a map carried over on purpose is the user's own, without that record.
    """
    out = {}
    for key, element in labels.items():
        copy = element.copy()
        copy.attrs = {k: v for k, v in element.attrs.items() if k != "tissue"}
        out[key] = copy
    return out


def test_calibration_is_kept_in_the_model_and_its_file(model, tmp_path):
    calibration = model.metadata["calibration"]
    assert calibration["available"] and calibration["n_folds"] == 3
    assert calibration["folds"] == "leave-one-section-out"
    assert len(calibration["inner_pearson"]) == len(GENES)
    # designed genes follow the morphology: they are learnt in the inner folds
    assert np.nanmean(calibration["inner_pearson"]) > 0.3
    half = np.asarray(calibration["intervals"]["half_width"]["0.9"])
    assert half.shape == (len(GENES),) and (half > 0).all()
    assert (np.asarray(calibration["intervals"]["half_width"]["0.95"]) >= half).all()
    path = hx.io.save_model(model, tmp_path / "model.pt")
    loaded = hx.io.load_model(path)
    assert loaded.metadata["calibration"] == calibration


def test_an_unseen_section_of_the_training_kind_does_not_warn(model, sections):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        table = hx.tl.predict(
            model, sections["d"], tiles_key=grid(sections["d"]), key_added="pred_d"
        )
    guard = table.uns["prediction"]["guard"]
    assert guard["available"] and not guard["warns"]
    assert guard["fraction_out_of_range"] < 0.2
    assert 20 < guard["median_percentile"] < 80
    assert {"guard_score", "guard_percentile", "out_of_range"} <= set(table.obs.columns)
    assert table.obs["out_of_range"].mean() == pytest.approx(guard["fraction_out_of_range"])


def test_a_slide_unlike_the_training_warns_by_name(model, sections, caplog):
    grid(sections["d"])  # its tissue map, which the recoloured copy reuses (colours turned)
    other = recoloured(sections["d"])
    with (pytest.warns(UserWarning, match="Slide 'recoloured'.*out of the training data") as caught,
          caplog.at_level(logging.INFO, logger="histoexpr")):
        table = hx.tl.predict(
            model, other, tiles_key=grid(other), key_added="pred", name="recoloured"
        )
    # said once: as a warning, not again in the log (both would print in a notebook)
    assert sum("out of the training data" in str(w.message) for w in caught) == 1
    assert "out of the training data" not in caplog.text
    guard = table.uns["prediction"]["guard"]
    assert guard["warns"] and guard["fraction_out_of_range"] > 0.5
    assert guard["median_percentile"] > 99
    # a model of H&E without stain normalisation names the model that absorbs such changes
    assert any("candidates={'stain': ['macenko']}" in str(w.message) for w in caught)


def test_intervals_cover_held_out_spots_near_their_level(model, sections):
    held = sections["d"]
    table = hx.tl.predict(model, held, tiles_key=spot_tiles(held), key_added="pred_spots")
    lower, upper = table.layers["lower"], table.layers["upper"]
    assert (upper > lower).all()
    np.testing.assert_allclose((upper + lower) / 2, table.X, atol=1e-5)
    counts = held.tables["table"]
    row = {s: i for i, s in enumerate(counts.obs["spot_id"])}
    rows = [row[s] for s in table.obs["spot_id"]]
    from histoexpr._core.expression import expression_targets

    truth = expression_targets(counts[rows], list(table.var_names))
    coverage = ((truth >= lower) & (truth <= upper)).mean()
    assert 0.8 <= coverage <= 0.98, coverage
    record = table.uns["prediction"]["intervals"]
    assert record["level"] == 0.9 and record["layers"] == ["lower", "upper"]
    narrow = hx.tl.predict(model, held, tiles_key="spot_tiles", key_added="pred_50", level=0.5)
    width_50 = (narrow.layers["upper"] - narrow.layers["lower"]).mean()
    assert width_50 < (upper - lower).mean()


def test_the_prediction_states_units_genes_training_and_tiles(model, sections, tmp_path):
    import anndata as ad

    table = hx.tl.predict(
        model, sections["d"], tiles_key=grid(sections["d"]), key_added="pred_record"
    )
    record = table.uns["prediction"]
    assert "log1p" in record["units"] and record["target_sum"] == 10000.0
    assert record["trained_on"] == model.metadata["trained_on"]
    assert set(record["trained_on"]) == {"a", "b", "c"}
    assert record["size_um"] == 40.0 and record["mpp"] == 1.0
    assert record["encoder"] == "handcrafted" and record["encoder_fingerprint"]
    assert "inner_pearson" in table.var
    half = (table.layers["upper"] - table.layers["lower"]) / 2
    np.testing.assert_allclose(table.var["interval_half_width"], half.mean(axis=0), rtol=1e-5)
    assert record["intervals"]["kind"] == model.metadata["calibration"]["intervals"]["kind"]
    table.write_zarr(tmp_path / "prediction.zarr")  # the record is plain enough to store
    back = ad.read_zarr(tmp_path / "prediction.zarr")
    assert back.uns["prediction"]["guard"]["warns"] == record["guard"]["warns"]
    assert back.uns["prediction"]["units"] == record["units"]
    np.testing.assert_allclose(
        table.var["inner_pearson"], model.metadata["calibration"]["inner_pearson"]
    )


def test_a_model_without_calibration_predicts_and_says_so(sections, uncalibrated):
    model = uncalibrated
    assert "calibration" not in model.metadata  # as in a model file of an earlier version
    table = hx.tl.predict(model, sections["d"], tiles_key=grid(sections["d"]), key_added="pred_old")
    record = table.uns["prediction"]
    assert record["guard"]["available"] is False and "calibrate" in record["guard"]["reason"]
    assert record["intervals"]["available"] is False
    assert "lower" not in table.layers and "guard_score" not in table.obs


@bad_input(
    "silently wrong",
    "`hx.tl.predict(spot_regressor, sdata, level=0.85)`: a level "
    "the model keeps no conformal interval at",
    says="ValueError naming the levels the model keeps (0.5, 0.8, 0.9, 0.95), before "
    "anything is written",
    fix="pass one of those levels",
)
def test_an_interval_level_the_model_lacks_is_refused_before_writing(model, sections):
    held = sections["d"]
    tiles_key = grid(held)  # the tiles are the user's input, made before the call
    before = set(held.tables)
    with pytest.raises(ValueError, match=r"levels \[0.5, 0.8, 0.9, 0.95\]"):
        hx.tl.predict(model, held, key_added="pred_level", level=0.85, tiles_key=tiles_key)
    assert set(held.tables) == before


def test_auto_reuses_the_fits_of_its_search(sections):
    model = hx.tl.fit(
        {n: sections[n] for n in "ab"},
        model="spot_regressor",
        route="auto",
        genes=GENES[:4],
        candidates={
            "encoder": ["handcrafted"],
            "stain": ["none"],
            "standardise_sections": [False],
            "context_um": [None],
            "target": ["log1p", "centred"],
            "head": ["ridge"],
        },
        **PATCH,
    )
    calibration = model.metadata["calibration"]
    assert calibration["available"] and calibration["reused_inner_fits"]
    assert calibration["n_folds"] == 2


def test_guard_percentiles_of_held_out_training_tiles_are_uniform():
    from histoexpr.tl._spot import _guard

    rng = np.random.default_rng(0)
    features = [rng.normal(size=(300, 12)) + shift for shift in (0.0, 0.2, -0.2)]
    folds = [
        ([(j, np.arange(300)) for j in range(3) if j != i], [(i, np.arange(300))]) for i in range(3)
    ]
    guard = _guard.fit_guard(features, folds)
    same = _guard.score_tiles(guard, rng.normal(size=(500, 12)) + 0.1)
    assert 35 < np.median(same["guard_percentile"]) < 65
    assert same["out_of_range"].mean() < 0.05
    far = _guard.score_tiles(guard, rng.normal(size=(500, 12)) * 2 + 3)
    assert far["out_of_range"].mean() > 0.9


def test_conformal_quantile_rank_and_coverage():
    from histoexpr.tl._spot import _conformal

    residuals = np.arange(1, 10, dtype=float)[:, None]  # n = 9: rank ceil(10 * 0.9) = 9
    assert _conformal.conformal_quantile(residuals, 0.9)[0] == 9
    assert _conformal.conformal_quantile(residuals, 0.5)[0] == 5
    assert np.isinf(_conformal.conformal_quantile(residuals[:5], 0.9)[0])  # rank 6 > n
    rng = np.random.default_rng(1)
    half = _conformal.conformal_quantile(np.abs(rng.normal(size=(2000, 3))), 0.9)
    new = np.abs(rng.normal(size=(20000, 3)))
    assert np.abs((new <= half).mean(axis=0) - 0.9).max() < 0.02


def _section(rng, n, *, offset=0.0, noise=0.5, signal=1.0, genes=3):
    """One synthetic section's (predicted, measured): a known offset and spread of residuals."""
    predicted = signal * rng.normal(size=(n, genes))
    return predicted, predicted + offset + noise * rng.normal(size=(n, genes))


def _coverage(intervals, pair, level=0.9):
    from histoexpr.tl._spot import _conformal

    lower, upper = _conformal.bounds(intervals, pair[0], level)
    return float(((pair[1] >= lower) & (pair[1] <= upper)).mean())


def test_section_weighted_intervals_cover_new_sections_with_their_own_offset():
    """One large section without offset and seven small ones with offsets: the pooled quantile
    follows the large one and under-covers a new section (offset drawn like the sections');
    weighting the sections alike, or convolving their offsets, covers it near 90 %."""
    from histoexpr.tl._spot import _conformal

    rng = np.random.default_rng(3)
    offsets = [0.0, 0.8, -0.8, 0.6, -0.6, 0.4, -0.4, 0.0]
    pairs = [_section(rng, 3000 if k == 0 else 80, offset=b) for k, b in enumerate(offsets)]
    new = [_section(rng, 400, offset=b) for b in offsets]  # a new section of each kind
    covered = {
        method: np.mean([_coverage(_conformal.fit_intervals(pairs, method), p) for p in new])
        for method in ("pooled", "section_weighted", "offset")
    }
    assert covered["pooled"] < 0.85, covered
    assert 0.87 <= covered["section_weighted"] <= 0.95, covered
    assert 0.87 <= covered["offset"] <= 0.95, covered


def test_spread_normalised_intervals_follow_a_new_sections_spread():
    """Sections whose residuals and predictions spread alike (a wider range of expression):
    the pooled half-width under-covers the widest new section and over-covers the narrowest;
    scaled by the new slide's own spread of predictions, both land near 90 %."""
    from histoexpr.tl._spot import _conformal

    rng = np.random.default_rng(4)
    pairs = [_section(rng, 500, noise=0.5 * s, signal=s) for s in (0.7, 0.85, 1.0, 1.15, 1.3)]
    wide = _section(rng, 2000, noise=0.75, signal=1.5)
    narrow = _section(rng, 2000, noise=0.3, signal=0.6)
    pooled = _conformal.fit_intervals(pairs, "pooled")
    spread = _conformal.fit_intervals(pairs, "spread")
    assert _coverage(pooled, wide) < 0.85 and _coverage(pooled, narrow) > 0.95
    assert 0.86 <= _coverage(spread, wide) <= 0.94
    assert 0.86 <= _coverage(spread, narrow) <= 0.94
    # every inner section is covered near 90 % by the others, as the model records it
    assert np.all(np.abs(np.asarray(spread["inner_coverage_0.9"]) - 0.9) < 0.04)


def test_mondrian_intervals_follow_the_prediction_level():
    """Residuals that grow with the predicted level: one quantile per tertile covers the low
    and the high predictions alike; the pooled one over-covers low and under-covers high."""
    from histoexpr.tl._spot import _conformal

    rng = np.random.default_rng(5)

    def section(n):
        predicted = rng.uniform(0, 3, size=(n, 2))
        return predicted, predicted + (0.1 + 0.4 * predicted) * rng.normal(size=(n, 2))

    pairs = [section(600) for _ in range(3)]
    new = section(6000)
    high = new[0] > 2
    for method, worst in (("pooled", 0.06), ("mondrian", 0.02)):
        lower, upper = _conformal.bounds(_conformal.fit_intervals(pairs, method), new[0], 0.9)
        inside = (new[1] >= lower) & (new[1] <= upper)
        gap = abs(inside[high].mean() - 0.9)
        assert (gap > worst) if method == "pooled" else (gap < worst), (method, gap)


def _deep_section(rng, n, depths, genes=3):
    """(predicted, measured) of a section whose spots have library sizes in ``depths``: the
    residuals' spread falls as one over the square root of the library size (counting noise)."""
    library = rng.uniform(*depths, size=n)
    predicted = rng.normal(size=(n, genes))
    noise = 0.5 * np.sqrt(3000 / library)[:, None]
    return (predicted, predicted + noise * rng.normal(size=(n, genes))), library


def test_depth_intervals_follow_a_spots_library_size():
    """Training sections of shallow to deep spots: the pooled half-width under-covers a new
    section sequenced shallower and over-covers a deeper one; scaled by each spot's library
    size (the fitted power near -1/2), both land near 90 %, and the deep one is narrower."""
    from histoexpr.tl._spot import _conformal

    rng = np.random.default_rng(6)
    made = [_deep_section(rng, 600, d) for d in ((1000, 3000), (2000, 6000), (3000, 9000))]
    pairs, libraries = [m[0] for m in made], [m[1] for m in made]
    (shallow, shallow_library), (deep, deep_library) = (
        _deep_section(rng, 4000, (600, 1200)), _deep_section(rng, 4000, (8000, 12000)))
    pooled = _conformal.fit_intervals(pairs, "pooled", libraries)
    depth = _conformal.fit_intervals(pairs, "depth", libraries)
    assert -0.6 < depth["depth_slope"] < -0.4, depth["depth_slope"]
    assert 2000 < depth["reference_library_size"] < 5000

    def covered(intervals, pair, library):
        lower, upper = _conformal.bounds(intervals, pair[0], 0.9, library)
        return float(((pair[1] >= lower) & (pair[1] <= upper)).mean()), float(
            (upper - lower).mean())

    assert covered(pooled, shallow, shallow_library)[0] < 0.85
    assert covered(pooled, deep, deep_library)[0] > 0.95
    (shallow_cov, shallow_width), (deep_cov, deep_width) = (
        covered(depth, shallow, shallow_library), covered(depth, deep, deep_library))
    assert 0.86 <= shallow_cov <= 0.94 and 0.86 <= deep_cov <= 0.94, (shallow_cov, deep_cov)
    assert deep_width < shallow_width / 2
    # asked at no library size: the reference's half-width, the pooled quantile of the scaled
    lower, upper = _conformal.bounds(depth, deep[0], 0.9)
    np.testing.assert_allclose((upper - lower)[0] / 2, depth["half_width"]["0.9"], rtol=1e-6)
    # the inner check asks each training section at its own spots' library sizes
    assert all(0.85 <= c <= 0.95 for c in depth["inner_coverage_0.9"])


def test_depth_slope_never_widens_intervals_with_more_umis():
    """Residuals that grow with the library size (not counting noise): the slope is clipped
    to 0, the pooled quantile; library sizes all alike: 0 too."""
    from histoexpr.tl._spot import _conformal

    rng = np.random.default_rng(7)
    library = rng.uniform(1000, 9000, size=2000)
    residuals = (library / 3000)[:, None] * rng.normal(size=(2000, 2))
    assert _conformal.depth_slope(residuals, library) == 0.0
    assert _conformal.depth_slope(residuals, np.full(2000, 5000.0)) == 0.0
    falling = (library / 3000)[:, None] ** -2 * rng.normal(size=(2000, 2))
    assert _conformal.depth_slope(falling, library) == -1.0  # at most as one over the size


def test_a_spots_interval_speaks_of_its_own_library_size(model, sections):
    """Spot tiles of a section with counts: each interval at its spot's library size; grid
    tiles (or library_size=None): at the reference; a number: at that depth. Each tile's half-
    width is the kept quantile times (L / L_ref) ** slope, and the record says which."""
    from histoexpr._core.expression import library_sizes

    held = sections["d"]
    intervals = model.metadata["calibration"]["intervals"]
    quantile = np.asarray(intervals["half_width"]["0.9"])
    reference, slope = intervals["reference_library_size"], intervals["depth_slope"]
    assert slope < 0  # the synthetic counts are Poisson: shallower spots are noisier

    def half_widths(table):
        return (table.layers["upper"] - table.layers["lower"]) / 2

    table = hx.tl.predict(model, held, tiles_key=spot_tiles(held), key_added="pred_depth")
    counts = held.tables["table"]
    own = dict(zip(counts.obs["spot_id"], library_sizes(counts), strict=True))
    library = np.array([own[s] for s in table.obs["spot_id"]])
    np.testing.assert_allclose(table.obs["interval_library_size"], library)
    capped = np.minimum(library, intervals["deepest_library_size"])  # never extrapolated deeper
    np.testing.assert_allclose(half_widths(table),
                               quantile[None, :] * (capped / reference)[:, None] ** slope,
                               rtol=1e-5)
    record = table.uns["prediction"]["intervals"]
    assert record["kind"] == "depth" and record["reference_library_size"] == reference
    assert f"{table.n_obs} of {table.n_obs} tiles at their spot's" in record["library_size"]
    at_reference = hx.tl.predict(model, held, tiles_key="spot_tiles", key_added="pred_ref",
                                 library_size=None)
    np.testing.assert_allclose(half_widths(at_reference),
                               np.broadcast_to(quantile, at_reference.shape), rtol=1e-5)
    deep = hx.tl.predict(model, held, tiles_key="spot_tiles", key_added="pred_deep",
                         library_size=intervals["deepest_library_size"])
    assert (deep.obs["interval_library_size"] == intervals["deepest_library_size"]).all()
    assert (half_widths(deep) < half_widths(at_reference)).all()
    # far deeper than any calibration spot (another platform): no narrower than the deepest
    deeper = hx.tl.predict(model, held, tiles_key="spot_tiles", key_added="pred_deeper",
                           library_size=100 * intervals["deepest_library_size"])
    np.testing.assert_allclose(half_widths(deeper), half_widths(deep), rtol=1e-6)
    on_grid = hx.tl.predict(model, held, tiles_key=grid(held), key_added="pred_grid_depth")
    assert (on_grid.obs["interval_library_size"] == reference).all()
    assert "0 of" in on_grid.uns["prediction"]["intervals"]["library_size"]


def test_a_table_without_raw_counts_gives_intervals_at_the_reference(model, sections):
    """Spot tiles of a section whose table holds log-normalised values (no depth to read):
    intervals at the reference library size, not an error."""
    from conftest import copy_section

    held = copy_section(sections["d"])
    spot_tiles(held)
    table = held.tables["table"]
    if "counts" in table.layers:
        del table.layers["counts"]
    table.X = np.log1p(np.asarray(table.X.todense() if hasattr(table.X, "todense")
                                  else table.X, dtype=np.float32))
    result = hx.tl.predict(model, held, tiles_key="spot_tiles", key_added="pred_lognorm")
    reference = model.metadata["calibration"]["intervals"]["reference_library_size"]
    assert (result.obs["interval_library_size"] == reference).all()


@bad_input(
    "silently wrong",
    "`hx.tl.predict(spot_regressor, sdata, library_size='spots')` (or `-1`, `nan`, `True`), or "
    "`library_size=5000` with a model whose intervals do not depend on depth",
    says="ValueError: library_size=5000 asks for intervals at a sequencing depth, but this "
    "model's intervals do not depend on depth ... Leave library_size='auto'",
    fix="pass a number of UMIs per spot, 'auto' or None; a number only with a model calibrated "
    "by this histoexpr",
)
def test_a_bad_library_size_is_refused_before_writing(model, sections, uncalibrated):
    from conftest import copy_section

    held = copy_section(sections["d"])
    before = elements(held)
    for bad in ("spots", True, [5000]):
        with pytest.raises(ValueError, match=r"pass a number of UMIs per spot .*'auto'"):
            hx.tl.predict(model, held, library_size=bad)
    for bad in (-1, 0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="library_size must be a positive number"):
            hx.tl.predict(model, held, library_size=bad)
    with pytest.raises(ValueError, match="keeps no intervals"):
        hx.tl.predict(uncalibrated, held, library_size=5000)
    assert elements(held) == before
    import copy

    pooled = copy.deepcopy(model)
    pooled.metadata["calibration"]["intervals"]["kind"] = "pooled"
    with pytest.raises(ValueError, match="do not depend on depth"):
        hx.tl.predict(pooled, held, library_size=5000)
    assert elements(held) == before


def test_the_model_keeps_the_chosen_method_and_its_inner_coverage(model, sections):
    """The depth-aware method, chosen on the training sections alone (benchmarks/README.md)."""
    from histoexpr.tl._spot import _conformal

    intervals = model.metadata["calibration"]["intervals"]
    assert _conformal.METHOD == "depth" and intervals["kind"] == "depth"
    inner = intervals["inner_coverage_0.9"]
    assert len(inner) == 3 and all(0.5 < c <= 1.0 for c in inner)
    table = hx.tl.predict(model, sections["d"], tiles_key=grid(sections["d"]), key_added="p_kind")
    assert table.uns["prediction"]["intervals"]["inner_coverage_0.9"] == inner


def test_interval_records_of_older_model_files_read_as_pooled():
    """A model file written before the methods were kept holds half-widths alone."""
    from histoexpr.tl._spot import _conformal

    old = {
        "method": "split-conformal, absolute residuals of held-out training sections",
        "n_calibration_spots": 10,
        "half_width": {"0.9": [0.5, 1.0]},
    }
    predicted = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    lower, upper = _conformal.bounds(old, predicted, 0.9)
    np.testing.assert_allclose(lower, predicted - [0.5, 1.0])
    np.testing.assert_allclose(upper, predicted + [0.5, 1.0])
    with pytest.raises(ValueError, match="levels"):
        _conformal.bounds(old, predicted, 0.8)


def test_prediction_maps_draw_the_interval_width(model, sections):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held = sections["d"]
    table = hx.tl.predict(model, held, tiles_key=spot_tiles(held), key_added="pred_drawn")
    figure = hx.pl.prediction(held, "pred_drawn", "table", genes=["EPCAM", "KRT8"],
                              interval=True, image_key=None)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles.count("EPCAM: interval width") == 1 and len(titles) == 6
    width = table.layers["upper"][:, 0] - table.layers["lower"][:, 0]
    drawn = [c for ax in figure.axes if ax.get_title() == "EPCAM: interval width"
             for c in ax.collections if c.get_array() is not None]
    np.testing.assert_allclose(np.sort(np.asarray(drawn[0].get_array(), float)),
                               np.sort(width), rtol=1e-5)
    plt.close(figure)
    del table.layers["lower"]
    with pytest.raises(KeyError, match="no layers \\['lower'\\]"):
        hx.pl.prediction(held, "pred_drawn", "table", genes="EPCAM", interval=True)


@pytest.mark.realdata
@pytest.mark.slow
def test_her2st_guard_and_intervals_on_a_held_out_section(data_dir):
    """Trained on her2st C2 and C3: C4 is covered near 90 % and passes; other tissues warn."""
    from histoexpr._core.expression import expression_targets

    root = data_dir / "her2st"
    images = {p.name.split("_")[0]: p for p in (root / "images").glob("*.jpg")}
    her2st = {s: hx.io.read_st(root / "counts" / f"{s}.tsv.gz",
                               root / "spots" / f"{s}_selection.tsv", images[s])
              for s in ("C2", "C3", "C4")}
    geometry = {"size_um": 112.0, "mpp": 1.0}
    model = hx.tl.fit({s: her2st[s] for s in ("C2", "C3")}, model="spot_regressor",
                      route="ridge", genes=50, **geometry)
    held = her2st["C4"]
    hx.pp.tile(held, "he", centres="spots", min_tissue=0, key_added="spot_tiles", **geometry)
    table = hx.tl.predict(model, held, tiles_key="spot_tiles", key_added="pred")
    counts = held.tables["table"]
    index = {s: i for i, s in enumerate(counts.obs["spot_id"])}
    table = table[[s in index for s in table.obs["spot_id"]]]
    truth = expression_targets(counts[[index[s] for s in table.obs["spot_id"]]],
                               list(table.var_names))
    coverage = ((truth >= table.layers["lower"]) & (truth <= table.layers["upper"])).mean()
    assert 0.85 <= coverage <= 0.95, coverage
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        grid_table = hx.tl.predict(model, held, key_added="grid_pred")
    assert grid_table.uns["prediction"]["guard"]["fraction_out_of_range"] < 0.5
    mob = hx.io.read_st(data_dir / "mob_st" / "MOB1.tsv.gz",
                        data_dir / "mob_st" / "alignment_table_MOB1.tsv",
                        data_dir / "mob_st" / "MOB1.jpg")
    svs = hx.io.read_wsi(data_dir / "wsi" / "CMU-1-Small-Region.svs")
    # a slide read with read_wsi is named by its file (name=None)
    for name, other in (("MOB1", mob), (None, svs)):
        said = re.escape(name or "CMU-1-Small-Region.svs")
        with pytest.warns(UserWarning, match=f"Slide '[^']*{said}'"):
            result = hx.tl.predict(model, other, key_added="grid_pred", name=name)
        assert result.uns["prediction"]["guard"]["fraction_out_of_range"] > 0.9


def test_features_scaled_within_each_section_do_not_hide_another_tissue(sections):
    # per-section scaling makes any slide's features look like the training's on average; the
    # guard reads the encoder's features before it
    model = hx.tl.fit({n: sections[n] for n in "abc"}, model="spot_regressor", route="ridge",
                      genes=GENES[:3], standardise_sections=True, context_um=80.0, **PATCH)
    grid(sections["d"])  # its tissue map, which the recoloured copy reuses (colours turned)
    other = recoloured(sections["d"])
    with pytest.warns(UserWarning, match="out of the training data") as caught:
        table = hx.tl.predict(model, other, tiles_key=grid(other), key_added="pred_scaled")
    assert table.uns["prediction"]["guard"]["fraction_out_of_range"] > 0.5
    # the warning says what per-section scaling absorbs (a global change of stain or exposure)
    assert any("scales features within each section" in str(w.message) for w in caught)
    assert not any("'macenko'" in str(w.message) for w in caught)  # one note, the one that fits
    same = hx.tl.predict(model, sections["d"], tiles_key=grid(sections["d"]),
                         key_added="pred_scaled")
    assert not same.uns["prediction"]["guard"]["warns"]


def _calibrate_random_sections(n_spots: int, **kwargs) -> dict:
    """The calibration of a linear head on two random sections of ``n_spots`` spots each."""
    from types import SimpleNamespace

    from histoexpr.tl._spot import _calibration

    rng = np.random.default_rng(0)
    prepared = [SimpleNamespace(name=n, targets=rng.normal(size=(n_spots, 3)).astype(np.float32),
                                centres=rng.normal(size=(n_spots, 2)),
                                library=rng.uniform(1e3, 1e4, size=n_spots)) for n in "ab"]
    features = [rng.normal(size=(n_spots, 5)).astype(np.float32) for _ in prepared]
    refit = _calibration.network_refit(lambda x, y: hx.models.LinearHead(n_features=5,
                                                                         n_genes=3))
    return _calibration.calibrate(prepared, features, refit, guard_features=features)


def test_inner_folds_too_small_leave_the_model_uncalibrated_with_the_reason():
    record = _calibrate_random_sections(2)
    assert record["available"] is False and "at least 3 training tiles" in record["reason"]


def elements(sdata) -> dict[str, list[str]]:
    """The names of a SpatialData's elements, by kind."""
    kinds = ("images", "labels", "points", "shapes", "tables")
    return {kind: sorted(getattr(sdata, kind).keys()) for kind in kinds}


@bad_input(
    "silently wrong",
    "`hx.tl.predict(model, sdata, level=0.9)` with a model that keeps no prediction intervals "
    "(trained with calibrate=False, or an older file), or `level=1.5`",
    says="ValueError: level=0.9 asks for prediction intervals, but this model keeps none ... "
    "Leave level=None (before: accepted, and the table had no intervals)",
    fix="leave level=None, or retrain with a head route and calibrate=True",
)
def test_a_level_is_refused_where_the_model_keeps_no_intervals(sections, uncalibrated):
    from conftest import copy_section

    held = copy_section(sections["d"])
    before = elements(held)
    with pytest.raises(ValueError, match="keeps none.*Leave level=None"):
        hx.tl.predict(uncalibrated, held, level=0.9)
    with pytest.raises(ValueError, match=r"level must be a fraction in \(0, 1\)"):
        hx.tl.predict(uncalibrated, held, level=1.5)
    assert elements(held) == before  # no tissue map, no tiles, no table
    table = hx.tl.predict(uncalibrated, held)  # level=None: no intervals, and said so
    assert table.uns["prediction"]["intervals"]["available"] is False


@bad_input(
    "obscure error",
    "`hx.tl.predict(spot_regressor, sdata, device='gpu')` (or `batch_size=0`, "
    "`tiles_key='a/b'`, `key_added=''`): refused only after the tissue map and the tiles were "
    "added to sdata, device='gpu' as torch's RuntimeError",
    says="ValueError: device='gpu' is not a device: use None (automatic), 'cpu', 'cuda' "
    "(before: the tissue map and tiles were left in sdata)",
    fix="pass a device of this machine, a batch size of at least 1, a key of letters, digits, "
    "'_', '-' or '.'",
)
def test_bad_options_are_refused_before_the_tissue_and_tiles_are_made(model, sections):
    from conftest import copy_section

    held = copy_section(sections["d"])
    before = elements(held)
    with pytest.raises(ValueError, match="device='gpu' is not a device"):
        hx.tl.predict(model, held, device="gpu")
    with pytest.raises(ValueError, match=r"batch_size must be an integer in \[1, inf\]"):
        hx.tl.predict(model, held, batch_size=0)
    with pytest.raises(ValueError, match="tiles_key='a/b' cannot name an element.*'a_b'"):
        hx.tl.predict(model, held, tiles_key="a/b")
    with pytest.raises(ValueError, match="key_added='' cannot name an element"):
        hx.tl.predict(model, held, key_added="")
    assert elements(held) == before


def test_an_interrupted_prediction_leaves_the_section_as_it_was(model, sections, monkeypatch):
    from conftest import copy_section

    from histoexpr.tl._spot import _spot_predict

    held = copy_section(sections["d"])
    before = elements(held)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_spot_predict, "annotate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        hx.tl.predict(model, held)  # after the tissue map and the tiles were made
    assert elements(held) == before
    monkeypatch.undo()
    tiles_key = grid(held)  # tiles that were there before the call stay
    with monkeypatch.context() as patched:
        patched.setattr(_spot_predict, "annotate", interrupted)
        with pytest.raises(KeyboardInterrupt):
            hx.tl.predict(model, held, tiles_key=tiles_key)
    assert tiles_key in held.shapes and f"{tiles_key}_table" in held.tables


@bad_input(
    "silently wrong",
    "`hx.tl.predict` on tiles of an image with NaN pixels (a float image with a masked-out "
    "region)",
    says="ValueError: The predictions of ... tiles ... are NaN or infinite ... Replace the "
    "non-finite pixels of the image (before: NaN rows in the table, and in its intervals)",
    fix="replace the image's NaN pixels (e.g. by the glass colour), or predict on other tiles",
)
@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # NaN pixels, on purpose
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_predictions_are_refused(model, sections):
    from conftest import copy_section

    held = copy_section(sections["d"])
    tiles_key = grid(held, "grid_nan")  # tiles without features yet: made from the NaN image
    image = held.images["he"]
    pixels = np.asarray(image.data).astype(np.float32) / 255
    pixels[:, 300:500, 300:500] = np.nan  # 100 x 100 um in the middle of the tissue
    held.images["he"] = Image2DModel.parse(
        pixels, dims=("c", "y", "x"), transformations=image.attrs["transform"]
    )
    before = elements(held)
    with pytest.raises(ValueError, match="predictions of [0-9]+ of [0-9]+ tiles 'grid_nan' are"):
        hx.tl.predict(model, held, tiles_key=tiles_key)
    assert elements(held) == before


@bad_input(
    "silently wrong",
    "`hx.pl.prediction(..., interval=True)` on a table whose layers['upper'] lie below "
    "layers['lower'] (swapped or overwritten); `genes=[]`; `panel_size=0`; "
    "`scale_bar_um=inf`; `data=None`",
    says="ValueError: The prediction table ... has layers['upper'] below layers['lower'] in ... "
    "values (before: negative widths drawn; max() arg is an empty sequence; matplotlib's "
    "'box_aspect' and 'fig_aspect' must be positive; a scale bar of inf um drawn; "
    "AttributeError: 'NoneType' object has no attribute 'uns')",
    fix="predict again to have the bounds, or pass interval=False; name genes (or None); a "
    "positive panel size and scale bar",
)
def test_prediction_maps_refuse_what_they_cannot_draw(model, sections):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held = sections["d"]
    table = hx.tl.predict(model, held, tiles_key=spot_tiles(held), key_added="pred_checked")
    measured = held.tables["table"]
    swapped = table.copy()
    swapped.layers["lower"], swapped.layers["upper"] = table.layers["upper"], table.layers["lower"]
    before = plt.get_fignums()
    with pytest.raises(ValueError, match=r"layers\['upper'\] below layers\['lower'\] in [0-9]+"):
        hx.pl.prediction(swapped, "X", measured, genes="EPCAM", interval=True)
    with pytest.raises(ValueError, match="genes is empty"):
        hx.pl.prediction(held, "pred_checked", "table", genes=[])
    with pytest.raises(TypeError, match="data must be a SpatialData .* got NoneType"):
        hx.pl.prediction(None, "pred_checked")
    with pytest.raises(ValueError, match="panel_size must be a positive number"):
        hx.pl.prediction(held, "pred_checked", "table", genes="EPCAM", panel_size=0)
    with pytest.raises(ValueError, match="scale_bar_um must be a positive number"):
        hx.pl.prediction(held, "pred_checked", "table", genes="EPCAM", scale_bar_um=np.inf)
    assert plt.get_fignums() == before
    figure = hx.pl.prediction(table, "X", measured, genes="EPCAM", interval=True)
    assert [ax.get_title() for ax in figure.axes][2] == "EPCAM: interval width"
    plt.close(figure)


@bad_input(
    "silently wrong",
    "`hx.tl.predict(model, sdata)` on an H&E parsed without a pixel size "
    "(`Image2DModel.parse(array, dims=...)`: the identity to 'global'), read as 1 um/px",
    says="ValueError: sdata.images['he'] does not state its pixel size: its transformation to "
    "'global' is the identity ... State it (before: tiles of the model's size in um cut at 1 "
    "um/px from a 0.5 um/px scan, predictions on the wrong scale)",
    fix="set a Scale([mpp, mpp]) transformation to 'global', or read the slide with "
    "hx.io.read_wsi(path, mpp=...)",
)
def test_an_image_without_a_pixel_size_is_refused(model, sections):
    bare = SpatialData(images={"he": without_pixel_size(sections["d"].images["he"])})
    with pytest.raises(ValueError, match="does not state its pixel size.*Scale\\(\\[mpp, mpp\\]"):
        hx.tl.predict(model, bare)
    assert not bare.labels and not bare.shapes and not bare.tables


@bad_input(
    "silently wrong",
    "`hx.tl.predict` again after the section's image was replaced or edited under the same key "
    "(the tiles' cached features were of the old pixels)",
    says="nothing: the features are remade from the new pixels (logged); before: the old "
    "features were reused and the predictions were those of the old image",
    fix="nothing to do",
)
def test_features_of_a_replaced_image_are_not_reused(model, sections):
    from conftest import copy_section

    held = copy_section(sections["d"])
    tiles_key = grid(held, "grid_replaced")
    before = hx.tl.predict(model, held, tiles_key=tiles_key, key_added="pred_before")
    held.images["he"] = recoloured(held).images["he"]
    held.labels.update(carried_over(held.labels))  # the same section's tissue, on purpose
    # the new pixels are unlike the training's: the guard says so (it saw the old ones before)
    with pytest.warns(UserWarning, match="out of the training data"):
        after = hx.tl.predict(model, held, tiles_key=tiles_key, key_added="pred_after")
    assert not np.allclose(np.asarray(before.X), np.asarray(after.X))
    source = copy_section(sections["d"])
    if "he_tissue" not in source.labels:  # the tissue of the original pixels, as held's
        hx.pp.detect_tissue(source)
    fresh = recoloured(source)
    with pytest.warns(UserWarning, match="out of the training data"):
        expected = hx.tl.predict(model, fresh, tiles_key=grid(fresh, "grid_replaced"))
    np.testing.assert_allclose(np.asarray(after.X), np.asarray(expected.X), rtol=1e-5, atol=1e-5)


@bad_input(
    "silently wrong",
    "a spot regressor calibrated on fewer held-out spots than an interval level needs (19 at "
    "0.95), or `hx.tl.predict(..., level=)` at such a level",
    says="UserWarning: Prediction intervals at levels ... are infinite",
    fix="train on more spots or sections, or use a level the warning says is finite",
)
def test_too_few_calibration_spots_for_a_level_warn_at_fit_and_at_predict(model, sections,
                                                                          caplog):
    """A split-conformal interval at 0.95 needs 19 residuals: with 12 it is infinite, said so."""
    import copy

    # the default level (0.9) infinite: a warning at fit
    with pytest.warns(UserWarning, match=r"levels 0\.9 \(needs 9\), 0\.95 \(needs 19\) are "
                                         r"infinite.*8 held-out"):
        record = _calibrate_random_sections(4)
    assert np.isinf(record["intervals"]["half_width"]["0.9"]).all()
    # only 0.95 infinite: logged at fit (predict warns if it is asked for)
    with caplog.at_level(logging.INFO, logger="histoexpr"):
        record = _calibrate_random_sections(6)
    half = record["intervals"]["half_width"]
    assert np.isinf(half["0.95"]).all() and np.isfinite(half["0.9"]).all()
    assert "levels 0.95 (needs 19) are infinite" in caplog.text

    few = copy.deepcopy(model)  # as a model calibrated on too few spots for its 90 % interval
    intervals = few.metadata["calibration"]["intervals"]
    intervals["half_width"]["0.9"] = [float("inf")] * len(intervals["half_width"]["0.9"])
    held = sections["d"]
    with pytest.warns(UserWarning, match=r"Slide 'd'.*0\.9 \(needs 9\) are infinite"):
        table = hx.tl.predict(few, held, tiles_key=spot_tiles(held), key_added="few", name="d")
    assert np.isinf(table.layers["upper"]).all()
    with warnings.catch_warnings(record=True) as caught:  # as calibrated: finite, not said
        warnings.simplefilter("always")
        hx.tl.predict(model, held, tiles_key=spot_tiles(held), key_added="calibrated", name="d")
    assert not [w for w in caught if "infinite" in str(w.message)]
