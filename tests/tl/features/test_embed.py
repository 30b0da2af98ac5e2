"""hx.tl.embed: features of every tile, from every kind of encoder, that carry what tiles show."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _catalogue import bad_input
from conftest import tree_digest, without_pixel_size
from sklearn.linear_model import LogisticRegression

import histoexpr as hx
from histoexpr.tl._features._embed import encode


@pytest.fixture(scope="module")
def section():
    sdata = hx.datasets.synthetic_section(seed=1, size_um=600, transcripts=False, spots=False)
    hx.pp.tile(sdata, "he", size_px=48, mpp=0.5, min_tissue=0.8)  # 24 um tiles
    return sdata


def region_of_tiles(sdata):
    """The region type under each tile centre (from the ground-truth region map)."""
    table = sdata.tables["he_tiles_table"]
    regions = []
    for x, y in table.obsm["spatial"]:
        patch = hx.io.read_region(sdata, "regions", (x - 1, y - 1, x + 1, y + 1), mpp=2.0)
        regions.append(int(np.asarray(patch).ravel()[0]))
    return np.array(regions)


def test_handcrafted_features_tell_regions_apart_on_held_out_tiles(section):
    hx.tl.embed(section, "he_tiles", encoder="handcrafted")
    table = section.tables["he_tiles_table"]
    features = table.obsm["X_handcrafted"]
    assert features.shape == (table.n_obs, 23) and features.dtype == np.float32
    assert table.uns["embeddings"]["X_handcrafted"]["encoder"] == "handcrafted"

    regions = region_of_tiles(section)
    keep = regions > 0
    x, y = features[keep], regions[keep]
    left = table.obsm["spatial"][keep, 0] < np.median(table.obsm["spatial"][keep, 0])
    probe = LogisticRegression(max_iter=2000).fit(
        (x[left] - x[left].mean(0)) / (x[left].std(0) + 1e-6), y[left])
    accuracy = probe.score((x[~left] - x[left].mean(0)) / (x[left].std(0) + 1e-6), y[~left])
    majority = np.mean(y[~left] == np.bincount(y[left]).argmax())
    assert accuracy > majority + 0.2, (accuracy, majority)


def test_features_match_the_encoder_applied_to_each_tile(section):
    hx.tl.embed(section, "he_tiles", encoder="handcrafted", key_added="X_check", batch_size=7)
    dataset = hx.pp.TileDataset(section, "he_tiles")
    encoder = hx.models.HandcraftedEncoder(in_channels=3)
    direct = encoder(torch.stack([dataset[i]["image"] for i in (0, 5, 11)])).numpy()
    np.testing.assert_allclose(section.tables["he_tiles_table"].obsm["X_check"][[0, 5, 11]],
                               direct, rtol=1e-4, atol=1e-5)


def test_model_files_and_state_dicts_give_the_same_features(section, tmp_path):
    torch.manual_seed(0)
    network = hx.models.TileEncoder(arch="small_cnn", in_channels=3)
    network.metadata = {"normalisation": {"mean": [0.7, 0.5, 0.7], "std": [0.2, 0.2, 0.2]}}
    hx.tl.embed(section, "he_tiles", encoder=network, key_added="X_object")
    path = hx.io.save_model(network, tmp_path / "encoder.pt")
    hx.tl.embed(section, "he_tiles", encoder=path, key_added="X_file")
    torch.save(network.state_dict(), tmp_path / "state.pt")
    hx.tl.embed(section, "he_tiles", encoder="small_cnn", checkpoint=tmp_path / "state.pt",
                key_added="X_state")
    obsm = section.tables["he_tiles_table"].obsm
    np.testing.assert_allclose(obsm["X_file"], obsm["X_object"], rtol=1e-5, atol=1e-6)
    assert obsm["X_object"].shape[1] == network.out_features
    # a state dict carries no normalisation: the default one is used, so features differ
    assert not np.allclose(obsm["X_state"], obsm["X_object"])
    hx.tl.embed(section, "he_tiles", encoder="small_cnn", checkpoint=path, key_added="X_ckpt")
    np.testing.assert_allclose(obsm["X_ckpt"], obsm["X_object"], rtol=1e-5, atol=1e-6)


def test_monai_resnet_features(section):
    small = hx.pp.TileDataset(section, "he_tiles")
    network = hx.models.TileEncoder(arch="resnet10", in_channels=3)
    features = encode(network, torch.utils.data.Subset(small, range(6)), batch_size=4,
                      device="cpu", normalisation={"mean": 0.5, "std": 0.25})
    assert features.shape == (6, 512) and np.isfinite(features).all()


def test_bad_input_is_explained(section, tmp_path):
    hx.tl.embed(section, "he_tiles", encoder="handcrafted", key_added="X_twice")
    with pytest.raises(KeyError, match="overwrite=True"):
        hx.tl.embed(section, "he_tiles", encoder="handcrafted", key_added="X_twice")
    with pytest.raises(ValueError, match="1 channel"):
        hx.tl.embed(section, "he_tiles", encoder=hx.models.TileEncoder(in_channels=3),
                    image_key="dapi")
    with pytest.raises(ValueError, match="Unknown encoder"):
        hx.tl.embed(section, "he_tiles", encoder="vgg99")
    wrong = tmp_path / "wrong.pt"
    torch.save({"layer.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ValueError, match="do not fit"):
        hx.tl.embed(section, "he_tiles", encoder="small_cnn", checkpoint=wrong, key_added="X_w")


def test_timm_is_an_optional_extra(section):
    try:
        import timm  # noqa: F401
    except Exception as error:  # timm imports torchvision, which has no CPU build here
        with (pytest.raises(ImportError, match="optional extra"),
              pytest.warns(UserWarning, match="RANDOM weights")):
            hx.tl.embed(section, "he_tiles", encoder="timm:resnet18", key_added="X_timm")
        pytest.skip(f"timm cannot be imported here ({type(error).__name__}: {error})")
    hx.tl.embed(section, "he_tiles", encoder="timm:resnet18", key_added="X_timm")
    assert section.tables["he_tiles_table"].obsm["X_timm"].shape[1] == 512


def test_squidpy_features_are_the_peer_baseline(section):
    pytest.importorskip("squidpy")
    import squidpy as sq

    hx.tl.embed(section, "he_tiles", encoder="squidpy:summary+histogram", key_added="X_sq")
    table = section.tables["he_tiles_table"]
    record = table.uns["embeddings"]["X_sq"]
    assert record["encoder"] == "squidpy"
    assert table.obsm["X_sq"].shape == (table.n_obs, len(record["feature_names"]))
    # the same numbers squidpy gives for the same crop
    pixels = hx.pp.TileDataset(section, "he_tiles").pixels(3)
    container = sq.im.ImageContainer(np.moveaxis(pixels, 0, -1), layer="image")
    expected = {**container.features_summary("image"), **container.features_histogram("image")}
    np.testing.assert_allclose(table.obsm["X_sq"][3],
                               [expected[name] for name in record["feature_names"]], rtol=1e-5)
    with pytest.raises(ValueError, match="Unknown squidpy feature"):
        hx.tl.embed(section, "he_tiles", encoder="squidpy:colour", key_added="X_bad")


def test_texture_properties_are_skimages_from_one_normalisation():
    """The GLCM properties of every angle at once: skimage's graycoprops values.

    The row sums (the marginal over j) come from a transposed copy summed over its leading axis,
    which adds in the order of j as ``p.sum(axis=1)`` does: the same bits, not only close.
    """
    from skimage.feature import graycomatrix, graycoprops

    from histoexpr.tl._features._squidpy_features import _ANGLES, _glcm_properties

    rng = np.random.default_rng(4)
    for spread in (0, 3, 40):  # a flat tile too (correlation 1)
        image = rng.normal(rng.uniform(60, 200), spread, (40, 40)).clip(0, 255).astype(np.uint8)
        matrix = graycomatrix(image, distances=(1,), angles=_ANGLES, levels=256)
        ours = _glcm_properties(matrix)
        for prop, values in ours.items():
            np.testing.assert_allclose(values, graycoprops(matrix, prop), rtol=1e-10, atol=1e-12)
        p = matrix.astype(np.float64)
        p /= p.sum(axis=(0, 1), keepdims=True)
        fast = np.ascontiguousarray(p.transpose(1, 0, 2, 3)).sum(axis=0)
        assert np.array_equal(fast, p.sum(axis=1))


def test_a_list_of_encoders_concatenates_their_features(section):
    pytest.importorskip("squidpy")
    hx.tl.embed(section, "he_tiles", encoder="handcrafted", key_added="X_alone")
    hx.tl.embed(section, "he_tiles", encoder="squidpy:summary", key_added="X_sq_alone")
    hx.tl.embed(section, "he_tiles", encoder=["squidpy:summary", "handcrafted"])
    table = section.tables["he_tiles_table"]
    record = table.uns["embeddings"]["X_squidpy+handcrafted"]
    n_squidpy = table.obsm["X_sq_alone"].shape[1]
    assert record["parts"] == {"squidpy": n_squidpy, "handcrafted": 23}
    np.testing.assert_array_equal(table.obsm["X_squidpy+handcrafted"],
                                  np.hstack([table.obsm["X_sq_alone"], table.obsm["X_alone"]]))
    with pytest.raises(ValueError, match="not to a list of encoders"):
        hx.tl.embed(section, "he_tiles", encoder=["small_cnn", "handcrafted"],
                    checkpoint="weights.pt", key_added="X_no")
    with pytest.raises(KeyError, match="already exists"):  # refused before any feature is made
        hx.tl.embed(section, "he_tiles", encoder=["squidpy:summary", "handcrafted"])


def test_an_encoder_trained_at_another_pixel_size_is_warned_about(section, caplog):
    torch.manual_seed(0)
    network = hx.models.TileEncoder(arch="small_cnn", in_channels=3, width=8)
    network.metadata = {"mpp": 0.25}  # as hx.tl.pretrain records it
    with caplog.at_level("WARNING", logger="histoexpr"):
        hx.tl.embed(section, "he_tiles", encoder=network, key_added="X_other_scale")
    assert "trained on tiles at 0.25 um/px but these tiles are at 0.5 um/px" in caplog.text
    caplog.clear()
    network.metadata = {"mpp": 0.5}
    with caplog.at_level("WARNING", logger="histoexpr"):
        hx.tl.embed(section, "he_tiles", encoder=network, key_added="X_same_scale")
    assert "um/px" not in caplog.text


@bad_input(
    "silently wrong",
    "`hx.tl.embed(sdata, tiles_key, encoder=pretrained)` with an encoder trained at a pixel size, "
    "on tiles cut in pixels from an image parsed without a pixel size (the identity to 'global')",
    says="ValueError: sdata.images['he'] does not state its pixel size ... State it (before: a "
    "warning that the tiles were at 1 um/px, and features made all the same)",
    fix="set a Scale([mpp, mpp]) transformation to 'global', or read the slide with "
    "hx.io.read_wsi(path, mpp=...)",
)
def test_a_pretrained_encoder_on_an_image_without_a_pixel_size_is_refused(section):
    from spatialdata import SpatialData

    bare = SpatialData(images={"he": without_pixel_size(section.images["he"])})
    with pytest.warns(UserWarning, match="does not state its pixel size"):  # tissue detection
        hx.pp.tile(bare, "he", size_px=32, min_tissue=0)
    network = hx.models.TileEncoder(arch="small_cnn", in_channels=3, width=8)
    network.metadata = {"mpp": 0.5}  # as hx.tl.pretrain records it
    with pytest.raises(ValueError, match=r"'he'\] does not state its pixel size"):
        hx.tl.embed(bare, "he_tiles", encoder=network, key_added="X_pretrained")
    assert "X_pretrained" not in bare.tables["he_tiles_table"].obsm
    # an encoder of no pixel size (hand-crafted features) describes pixels, as before
    hx.tl.embed(bare, "he_tiles", encoder="handcrafted")
    assert np.isfinite(bare.tables["he_tiles_table"].obsm["X_handcrafted"]).all()


@bad_input("obscure error", "`hx.tl.embed` (or `hx.tl.predict` of a spot regressor) of more "
           "tiles x features than the memory holds: the features of every tile kept until the end",
           says="MemoryError: `embed (handcrafted): the features of ... tiles x 23 dimensions "
                "(float32, the batches and their concatenation) would allocate ... Make fewer "
                "tiles (a larger stride ...`, before any tile is read (after the first batch "
                "for a network that does not state its out_features)",
           fix="a larger tile stride (fewer tiles), or an encoder with fewer features")
def test_features_are_estimated_before_the_tiles_are_read(section, monkeypatch):
    table = section.tables["he_tiles_table"]
    n_tiles, before = table.n_obs, (set(table.obsm), dict(table.uns.get("embeddings", {})))
    read = []
    real = hx.pp.TileDataset.__getitem__
    monkeypatch.setattr(hx.pp.TileDataset, "__getitem__",
                        lambda self, index: read.append(index) or real(self, index))
    hx.settings.max_memory = n_tiles * 23 * 8 - 1  # one byte short of the features
    with pytest.raises(MemoryError, match=rf"embed \(handcrafted\): the features of {n_tiles:,} "
                                          r"tiles x 23 dimensions.*larger stride"):
        hx.tl.embed(section, "he_tiles", encoder="handcrafted", key_added="X_big")
    assert read == []
    assert (set(table.obsm), dict(table.uns.get("embeddings", {}))) == before
    # a network that does not state its output size: refused after its first batch
    dataset = hx.pp.TileDataset(section, "he_tiles")
    flat = torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Flatten())  # 3 x 6 x 6 = 108
    with pytest.raises(MemoryError, match=rf"the features of {n_tiles:,} tiles x 108 dim"):
        encode(flat, dataset, batch_size=4, device="cpu", normalisation=None)
    assert len(read) == 4
    # the fix: fewer tiles (a larger stride) fit the same limit
    fewer = torch.utils.data.Subset(dataset, range(0, n_tiles, 2))
    assert encode(hx.models.HandcraftedEncoder(in_channels=3), fewer, batch_size=8,
                  device="cpu", normalisation=None).shape == (len(fewer), 23)


# --- embed_cohort checks its options before any slide ------------------------------------------

@pytest.fixture(scope="module")
def slide_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    hx.datasets.synthetic_slide_cohort(folder, 2, seed=0, size_um=200, mpp=1.0)
    return folder / "manifest.csv"


@bad_input("obscure error", "`hx.tl.embed_cohort(cohort, size_px=-1)` (or `encoder='nope'`, "
           "`min_area_um2=nan`, `size_um=inf`) on a cohort of one slide: each slide's task "
           "failed on its own, and with one slide only a warning and status 'failed' came back",
           says="ValueError: `size_px must be an integer in [1, inf], got -1` / `Unknown "
                "encoder 'nope'` / `min_area_um2 must be a non-negative number` / `size_um "
                "must be a positive number`, before any slide is opened",
           fix="fix the option as the message says",
           match=r"size_px must be an integer in \[1, inf\], got -1|Unknown encoder 'nope'|"
                 r"min_area_um2 must be a non-negative number|size_um must be a positive number")
@pytest.mark.parametrize(("bad", "said"), [
    ({"size_px": -1}, r"size_px must be an integer in \[1, inf\], got -1"),
    ({"encoder": "nope"}, "Unknown encoder 'nope'"),
    ({"min_area_um2": float("nan")}, "min_area_um2 must be a non-negative number"),
    ({"size_um": float("inf")}, "size_um must be a positive number"),
])
def test_embed_cohort_checks_every_option_before_any_slide(bad, said, slide_files, tmp_path,
                                                           monkeypatch):
    from histoexpr.tl._features import _embed_cohort

    def never(*args, **kwargs):
        raise AssertionError("a slide was processed before the options were checked")

    monkeypatch.setattr(_embed_cohort, "_process_slide", never)
    store_dir = tmp_path / "stores"
    cohort = hx.io.read_cohort(slide_files, store_dir=store_dir).subset(["slide_00"])
    before = tree_digest(store_dir) if store_dir.exists() else None
    with pytest.raises(ValueError, match=said):
        hx.tl.embed_cohort(cohort, **bad)
    assert (tree_digest(store_dir) if store_dir.exists() else None) == before


@bad_input("silently wrong", "`hx.tl.embed_cohort` on a cohort of one slide whose slide fails "
           "(only a warning came back, and a frame with status 'failed')",
           says="RuntimeError: `Every slide embed_cohort tried failed (1)`",
           fix="fix the slide file (or the options) and run again")
def test_embed_cohort_raises_when_its_only_slide_fails(slide_files, tmp_path, monkeypatch):
    from histoexpr.tl._features import _embed_cohort

    def broken(task, encoders):
        raise OSError("cannot read the slide")

    monkeypatch.setattr(_embed_cohort, "_process_slide", broken)
    cohort = hx.io.read_cohort(slide_files, store_dir=tmp_path / "stores")
    with pytest.raises(RuntimeError, match=r"Every slide embed_cohort tried failed \(1\): "
                                           "slide_00: OSError: cannot read the slide"):
        hx.tl.embed_cohort(cohort.subset(["slide_00"]), size_um=32, mpp=2.0)
    assert not cohort.store("slide_00").complete


class _PooledColour(hx.models.Network):
    """An outside encoder with no weights: its output depends on its configuration alone."""

    def __init__(self, *, pool: str = "mean", in_channels: int = 3) -> None:
        super().__init__(config={"pool": pool, "in_channels": in_channels})
        self.pool, self.in_channels, self.out_features = pool, in_channels, in_channels

    def forward(self, x):
        return x.mean(dim=(2, 3)) if self.pool == "mean" else x.amax(dim=(2, 3))


@bad_input("silently wrong", "`hx.tl.embed_cohort(cohort, encoder=net)` again with a network "
           "object configured otherwise (same class, same weights: e.g. another pooling)",
           says="ValueError: `The features 'X_pooled' of ... were made otherwise than asked "
                "now (params['encoder']: ...)` (before: 'skipped', the old features kept, even "
                "with overwrite=True)",
           fix="overwrite=True recomputes them, or another key_added")
def test_a_network_configured_otherwise_is_another_encoder(slide_files, section, tmp_path):
    from histoexpr.tl._features._embed import encoder_fingerprint

    cohort = hx.io.read_cohort(slide_files, store_dir=tmp_path / "stores")
    options = {"size_um": 40, "mpp": 1.0, "key_added": "X_pooled"}
    hx.tl.embed_cohort(cohort, encoder=_PooledColour(pool="mean"), **options)
    mean = cohort.store("slide_00").features("he_tiles", "X_pooled")
    with pytest.raises(ValueError, match=r"'X_pooled' of .* were made otherwise than asked now"):
        hx.tl.embed_cohort(cohort, encoder=_PooledColour(pool="max"), **options)
    frame = hx.tl.embed_cohort(cohort, encoder=_PooledColour(pool="max"), overwrite=True,
                               **options)
    assert (frame["status"] == "features").all()  # the tiles kept, the features made again
    highest = cohort.store("slide_00").features("he_tiles", "X_pooled")
    assert (highest > mean + 1e-6).any(axis=1).all()  # every tile's maxima above its means
    # one section: the records tell the two apart
    assert (encoder_fingerprint(_PooledColour(pool="mean"))
            != encoder_fingerprint(_PooledColour(pool="max")))
    assert (encoder_fingerprint(_PooledColour(pool="max"))
            == encoder_fingerprint(_PooledColour(pool="max")))
