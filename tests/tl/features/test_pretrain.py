"""hx.tl.pretrain (SimCLR, MoCo-v2), hx.tl.probe and the stain augmentations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _catalogue import bad_input

import histoexpr as hx
from histoexpr.tl._features import _pretrain

TINY = {"encoder": "small_cnn", "batch_size": 32, "projection_dim": 32}


def _section(seed: int):
    sdata = hx.datasets.synthetic_section(seed=seed, size_um=450, transcripts=False, spots=False)
    hx.pp.tile(sdata, "he", size_px=32, mpp=1.0, min_tissue=0.8)  # 32 um tiles
    # overlapping tiles for the probe: four times as many, so its score varies less
    hx.pp.tile(sdata, "he", size_px=32, mpp=1.0, min_tissue=0.8, stride_px=16,
               key_added="probe_tiles")
    return sdata


@pytest.fixture(scope="module")
def sections():
    return [_section(seed) for seed in (11, 12)]


def region_of_tiles(sdata) -> np.ndarray:
    """The generating region type under each probe tile's centre (0: background)."""
    table = sdata.tables["probe_tiles_table"]
    return np.array([int(np.asarray(hx.io.read_region(
        sdata, "regions", (x - 1, y - 1, x + 1, y + 1), mpp=2.0)).ravel()[0])
        for x, y in table.obsm["spatial"]])


def probe_regions(sections, encoder, key) -> float:
    """Balanced accuracy of a leave-one-section-out probe of the region types."""
    features, regions, groups = [], [], []
    for i, sdata in enumerate(sections):
        hx.tl.embed(sdata, "probe_tiles", encoder=encoder, key_added=key, overwrite=True)
        features.append(sdata.tables["probe_tiles_table"].obsm[key])
        regions.append(region_of_tiles(sdata))
        groups.append(np.full(len(regions[-1]), i))
    x, y, g = (np.concatenate(v) for v in (features, regions, groups))
    scores = hx.tl.probe(x[y > 0], y[y > 0], groups=g[y > 0])
    assert list(scores["fold"]) == ["0", "1"]
    return float(scores["balanced_accuracy"].mean())


def test_pretrained_features_beat_random_init_on_held_out_sections(sections, tmp_path):
    torch.manual_seed(0)
    random_init = hx.models.TileEncoder(arch="small_cnn", in_channels=3)
    # pretraining starts from a copy of random_init's weights and leaves random_init as it is.
    # Stain colour tells the synthetic regions apart, so the colour jitter is kept mild
    # (strength 0.3): with the default strength the gain over random init is not reliable here
    # (-0.04 to +0.02 over seeds), with 0.3 it is +0.022 to +0.028 (3 epochs at a constant
    # lr 1e-3, or along the default cosine schedule at peak lr 3e-3 or over 5 epochs).
    augment = hx.pp.augmentations("he", size_px=32, strength=0.3)
    pretrained = hx.tl.pretrain(sections, "he_tiles", method="simclr", epochs=3, lr=3e-3,
                                seed=0, augment=augment, **{**TINY, "encoder": random_init})
    meta = pretrained.metadata
    assert meta["method"] == "simclr" and meta["mpp"] == 1.0 and meta["size_px"] == 32
    assert meta["channels"] == ["r", "g", "b"] and meta["stain"] == "he"
    assert meta["pretraining"]["loss"][-1] < meta["pretraining"]["loss"][0]
    assert [step["name"] for step in meta["augmentations"]][:2] == ["RandomResizedCrop",
                                                                    "RandomHorizontalFlip"]
    random_init.metadata = {"normalisation": meta["normalisation"]}

    path = hx.io.save_model(pretrained, tmp_path / "simclr.pt")
    assert hx.io.load_model(path).metadata == meta
    before = probe_regions(sections, random_init, "X_random")
    after = probe_regions(sections, str(path), "X_simclr")
    assert after > before + 0.015, (before, after)


def test_a_run_killed_mid_epoch_resumes_to_the_same_encoder(sections, tmp_path, monkeypatch):
    section = sections[0]
    hx.pp.tile(section, "he", size_px=16, mpp=2.0, min_tissue=0.8, key_added="small_tiles")
    options = {**TINY, "method": "moco", "queue_size": 64, "epochs": 2, "seed": 3}
    whole = hx.tl.pretrain(section, "small_tiles", **options)
    steps_per_epoch = len(section.tables["small_tiles_table"]) // TINY["batch_size"]

    from histoexpr.models import ContrastiveLearner

    real_forward, calls = ContrastiveLearner.forward, []

    def step_then_die(*args):  # the contrastive loss of one training step
        calls.append(1)
        if len(calls) > steps_per_epoch + 1:  # one step into the second epoch
            raise KeyboardInterrupt
        return real_forward(*args)

    monkeypatch.setattr(ContrastiveLearner, "forward", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        hx.tl.pretrain(section, "small_tiles", checkpoint_dir=tmp_path, **options)
    monkeypatch.setattr(ContrastiveLearner, "forward", real_forward)
    saved = torch.load(tmp_path / _pretrain.CHECKPOINT_NAME, weights_only=True)
    assert saved["state"]["epoch"] == 1

    with pytest.raises(FileExistsError, match="resume=True"):
        hx.tl.pretrain(section, "small_tiles", checkpoint_dir=tmp_path, **options)
    resumed = hx.tl.pretrain(section, "small_tiles", checkpoint_dir=tmp_path, resume=True,
                             **options)
    assert resumed.metadata["pretraining"]["loss"] == pytest.approx(
        whole.metadata["pretraining"]["loss"])
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name)

    with pytest.raises(ValueError, match="method='moco'"):
        hx.tl.pretrain(section, "small_tiles", checkpoint_dir=tmp_path, resume=True,
                       **{**options, "method": "simclr"})
    with pytest.raises(ValueError, match="encoder"):
        hx.tl.pretrain(section, "small_tiles", checkpoint_dir=tmp_path, resume=True,
                       **{**options, "encoder": "resnet10"})


def test_bad_input_is_refused_with_a_way_out(sections):
    with pytest.raises(ValueError, match="lower batch_size"):
        hx.tl.pretrain(sections[0], "he_tiles", batch_size=10_000)
    with pytest.raises(ValueError, match="queue_size"):
        hx.tl.pretrain(sections[0], "he_tiles", method="moco", batch_size=32, queue_size=16)
    rgb = hx.models.TileEncoder(arch="small_cnn", in_channels=3)
    with pytest.raises(ValueError, match="1 channel"):
        hx.tl.pretrain(sections[0], "he_tiles", image_key="dapi", encoder=rgb)
    with pytest.raises(ValueError, match="Unknown schedule"):
        hx.tl.pretrain(sections[0], "he_tiles", schedule="step")
    with pytest.raises(ValueError, match="warmup"):
        hx.tl.pretrain(sections[0], "he_tiles", warmup=1.0)
    with pytest.raises(ValueError, match="resume=True needs"):
        hx.tl.pretrain(sections[0], "he_tiles", resume=True)
    with pytest.raises(TypeError, match="SpatialData"):
        hx.tl.pretrain([], "he_tiles")


def test_augmentations_suit_the_stain_and_rebuild_from_their_spec():
    from histoexpr.pp._augment import build_augmentations

    tiles = torch.rand(6, 3, 24, 24)
    he = hx.pp.augmentations("he", size_px=24)
    assert "HEDJitter" in [s["name"] for s in he.spec]
    assert he(tiles).shape == tiles.shape
    torch.manual_seed(0)
    first = he(tiles)
    torch.manual_seed(0)
    torch.testing.assert_close(build_augmentations(he.spec)(tiles), first)
    assert not torch.allclose(he(tiles), he(tiles))

    fluorescence = hx.pp.augmentations("fluorescence", size_px=24)
    assert "RandomGamma" in [s["name"] for s in fluorescence.spec]
    out = fluorescence(torch.rand(4, 1, 24, 24))
    assert out.shape == (4, 1, 24, 24) and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match="Unknown stain"):
        hx.pp.augmentations("ihc", size_px=24)


def test_hed_jitter_keeps_the_image_at_zero_strength_and_moves_stains_otherwise():
    from histoexpr.pp._augment import HEDJitter

    tiles = torch.rand(4, 3, 8, 8) * 0.8 + 0.1
    torch.testing.assert_close(HEDJitter(sigma=0.0, p=1.0)(tiles), tiles, atol=1e-4, rtol=1e-4)
    assert (HEDJitter(sigma=0.1, p=1.0)(tiles) - tiles).abs().mean() > 0.005


def test_probe_scores_classes_and_continuous_targets_on_held_out_groups():
    rng = np.random.default_rng(0)
    n = 240
    features = rng.normal(size=(n, 10))
    groups = np.repeat(["a", "b", "c"], n // 3)
    genes = np.column_stack([features[:, 0] * 2 + rng.normal(size=n) * 0.5,
                             rng.normal(size=n)])  # one gene follows the features, one is noise
    scores = hx.tl.probe(features, genes, groups=groups)
    assert list(scores.columns[:3]) == ["fold", "n_train", "n_test"]
    by_gene = scores.groupby("target")["pearson"].mean()
    assert by_gene["0"] > 0.9 and abs(by_gene["1"]) < 0.2
    assert (scores["n_test"] == 80).all()

    classes = np.where(features[:, 1] > 0, "up", "down")
    class_scores = hx.tl.probe(features, classes, groups=groups)
    assert class_scores["balanced_accuracy"].mean() > 0.9
    noise_scores = hx.tl.probe(rng.normal(size=(n, 10)), classes, groups=groups)
    assert noise_scores["balanced_accuracy"].mean() < 0.65

    from anndata import AnnData

    table = AnnData(obs={"kind": classes, "section": groups}, obsm={"X_feat": features})
    from_table = hx.tl.probe(table, "kind", groups="section", features_key="X_feat")
    assert (from_table["target"] == "kind").all()
    pd.testing.assert_frame_equal(from_table.drop(columns="target"),
                                  class_scores.drop(columns="target"))

    with pytest.raises(ValueError, match="one row per observation"):
        hx.tl.probe(features, classes[:10])
    with pytest.raises(ValueError, match="pass groups="):
        hx.tl.probe(features, genes, standardise="group")
    with pytest.raises(ValueError, match="single group"):
        hx.tl.probe(features, classes, groups=np.zeros(n))


def test_probe_standardised_per_group_undoes_a_section_wise_change_of_scale():
    rng = np.random.default_rng(1)
    n = 300
    signals = rng.normal(size=(n, 2))
    gene = signals.sum(axis=1) + rng.normal(size=n) * 0.3
    groups = np.repeat(["a", "b", "c"], n // 3)
    features = signals.copy()
    features[groups == "c", 1] *= 10  # section c's second feature on another scale ("stain")
    per_training = hx.tl.probe(features, gene, groups=groups).set_index("fold")["pearson"]
    per_group = hx.tl.probe(features, gene, groups=groups, standardise="group").set_index(
        "fold")["pearson"]
    assert per_training["c"] < 0.85 < 0.95 < per_group["c"], (per_training, per_group)
    assert per_group[["a", "b"]].min() > 0.95


def _lrs(total, schedule, warmup, done=0):
    """The learning rates of the pretraining schedule at every step after ``done``."""
    optimiser = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = _pretrain._scheduler(optimiser, total, schedule, warmup, done=done)
    lrs = []
    for _ in range(total - done):
        lrs.append(optimiser.param_groups[0]["lr"])
        optimiser.step()
        if scheduler is not None:
            scheduler.step()
    return np.array(lrs)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    import math

    total = 100
    factors = _lrs(total, "cosine", 0.1)
    # the closed form the schedule follows: linear warm-up, then a half cosine to zero
    warm = 10
    expected = [(s + 1) / (warm + 1) if s < warm else
                0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))) for s in range(total)]
    np.testing.assert_allclose(factors, expected, atol=1e-9)
    assert factors[0] < 0.15 and np.all(np.diff(factors[:10]) > 0)
    assert max(factors) == pytest.approx(1.0) and np.all(np.diff(factors[10:]) < 0)
    assert factors[-1] < 0.01
    np.testing.assert_allclose(_lrs(total, "cosine", 0.0)[[0, 50]], [1.0, 0.5], atol=1e-9)
    assert _pretrain._scheduler(None, total, "constant", 0.1) is None
    # a resumed run continues the schedule where it stopped
    np.testing.assert_allclose(_lrs(total, "cosine", 0.1, done=37), factors[37:], atol=1e-9)


def test_small_cnn_can_pool_every_block():
    torch.manual_seed(0)
    tiles = torch.rand(3, 3, 32, 32)
    last_only = hx.models.TileEncoder(arch="small_cnn", width=8).eval()
    levels = hx.models.TileEncoder(arch="small_cnn", width=8, pool_levels=True).eval()
    levels.load_state_dict(last_only.state_dict())  # the same weights: only the read-out differs
    features = levels(tiles)
    assert features.shape == (3, 15 * 8) == (3, levels.out_features)
    first_block = last_only.body[:4](tiles).mean(dim=(2, 3))
    torch.testing.assert_close(features[:, :8], first_block)
    torch.testing.assert_close(features[:, -64:], last_only(tiles))
    assert "pool_levels" not in last_only.get_config()
    with pytest.raises(ValueError, match="pool_levels"):
        hx.models.TileEncoder(arch="resnet10", pool_levels=True)


@bad_input("obscure error", "a pretraining batch_size that the processes of a torchrun launch "
           "cannot split evenly", says="names the number of processes and a batch_size that "
           "works, before anything is written", fix="pass a multiple of the number of processes")
def test_the_global_batch_must_split_evenly_among_processes(sections, tmp_path, monkeypatch):
    from histoexpr._core import distributed as _distributed

    three = _distributed.Context(rank=0, world_size=3, local_rank=0)  # as under torchrun
    monkeypatch.setattr(_distributed, "context", lambda device=None: three)
    with pytest.raises(ValueError, match=r"multiple of 3: pass batch_size=30"):
        hx.tl.pretrain(sections, "he_tiles", epochs=1, checkpoint_dir=tmp_path / "run",
                       **{**TINY, "batch_size": 32})
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_processes_pretrain_the_same_encoder_as_one(tmp_path, monkeypatch):
    """hx.tl.pretrain on two CPU processes (gloo, torchrun) matches one process on SimCLR and MoCo.

    Each process takes half of every batch; the contrastive loss gathers the other process's
    projections (SimCLR's negatives, MoCo's keys), so the loss and the averaged gradients are
    those of one process on the whole batch. Views are deterministic and batch normalisation is
    left out (its statistics are per process on CPUs). In float64, so that the order of sums
    does not matter: the weights after 2 epochs of AdamW agree to rtol 1e-7 (in float32 they
    differ by up to ~3e-4 relative, the rounding grown by AdamW's sign-like first steps).
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import _ddp_worker

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
         "--nproc_per_node=2", str(Path(_ddp_worker.__file__)), str(tmp_path), "pretrain"],
        env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = torch.load(tmp_path / "pretrain_ddp.pt", weights_only=True)

    monkeypatch.setattr(torch.nn, "BatchNorm1d", torch.nn.Identity)
    monkeypatch.setattr(torch.nn, "BatchNorm2d", torch.nn.Identity)
    monkeypatch.setattr(hx.settings, "progress_bar", False)
    try:
        torch.set_default_dtype(torch.float64)  # as in the worker
        single = _ddp_worker.pretrain_both(_ddp_worker.pretrain_sections())
        start = hx.models.TileEncoder(arch="small_cnn", in_channels=3).state_dict()
    finally:
        torch.set_default_dtype(torch.float32)
    assert single["simclr"]["loss"][-1] < single["simclr"]["loss"][0]
    for method in ("simclr", "moco"):
        assert ddp[method]["processes"] == 2 and single[method]["processes"] == 1
        # the loss per epoch is that of the whole batches (without gathering, each process
        # would score its views against half the negatives: a lower loss)
        np.testing.assert_allclose(ddp[method]["loss"], single[method]["loss"], rtol=1e-7)
        for name, value in single[method]["state"].items():
            torch.testing.assert_close(ddp[method]["state"][name], value, rtol=1e-7, atol=1e-9)
        name = "body.0.weight"  # training moved the weights
        assert (single[method]["state"][name] - start[name]).abs().max() > 1e-3


def test_channels_last_training_gives_the_encoder_of_the_usual_layout(sections, monkeypatch):
    """Pretraining in channels-last layout (faster on CPUs) learns as in the usual layout.

    The layout changes only the order of float32 sums inside the convolutions: one step's loss
    and gradients agree with the usual layout to float rounding, and so do the losses of whole
    epochs (AdamW divides by the gradients' running spread, so the weights themselves drift
    apart by more than rounding over many steps, as with any change of summation order). The
    returned encoder is in the usual layout.
    """
    from histoexpr.models import ContrastiveLearner

    torch.manual_seed(0)
    config = {"arch": "small_cnn", "in_channels": 3, "width": 8, "pool_levels": True}
    usual = ContrastiveLearner(encoder=config, projection_dim=16)
    fast = ContrastiveLearner(encoder=config, projection_dim=16)
    fast.load_state_dict(usual.state_dict())
    fast.to(memory_format=torch.channels_last)
    views = torch.rand(2, 16, 3, 24, 24).unbind()
    fast_views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    loss_usual, loss_fast = usual(*views), fast(*fast_views)
    torch.testing.assert_close(loss_fast, loss_usual, rtol=1e-5, atol=1e-6)
    loss_usual.backward()
    loss_fast.backward()
    for (name, a), b in zip(usual.named_parameters(), fast.parameters(), strict=True):
        scale = float(a.grad.abs().max())  # float32 rounding of sums of many terms
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=2e-5 * scale, msg=name)

    section = sections[0]
    options = {**TINY, "method": "simclr", "epochs": 2, "seed": 5}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the sums' order also depends on the threads: one, as in the suite
    try:
        fast = hx.tl.pretrain(section, "he_tiles", **options)
        monkeypatch.setattr(_pretrain, "_CHANNELS_LAST", False)
        usual = hx.tl.pretrain(section, "he_tiles", **options)
    finally:
        torch.set_num_threads(threads)
    assert len(fast.metadata["pretraining"]["loss"]) == 2
    np.testing.assert_allclose(fast.metadata["pretraining"]["loss"],
                               usual.metadata["pretraining"]["loss"], rtol=1e-4)
    assert all(value.is_contiguous() for value in fast.state_dict().values())


def test_tiles_read_in_order_before_training_give_the_same_encoder(sections, monkeypatch):
    """Pretraining reads its cached tiles once, in order, before the first epoch.

    The tiles kept are the same as when the shuffled first epoch reads them, so the encoder is
    the same to the last bit; every tile is read exactly once.
    """
    from histoexpr.pp import TileDataset

    reads = []
    read = TileDataset.__getitem__

    def counted(self, index):
        reads.append(index)
        return read(self, index)

    monkeypatch.setattr(TileDataset, "__getitem__", counted)
    options = {**TINY, "method": "simclr", "epochs": 2, "seed": 3}
    section = sections[0]
    n_tiles = len(section.shapes["he_tiles"])
    filled = hx.tl.pretrain(section, "he_tiles", **options)
    assert reads == list(range(n_tiles))
    reads.clear()
    monkeypatch.setattr(hx.pp.CachedDataset, "fill", lambda self, **kwargs: None)
    lazily = hx.tl.pretrain(section, "he_tiles", **options)
    assert len(set(reads)) == len(reads) and reads != list(range(n_tiles))  # shuffled
    for (name, a), b in zip(filled.state_dict().items(), lazily.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert filled.metadata["normalisation"] == lazily.metadata["normalisation"]


def test_pretraining_cache_is_estimated_before_tiles_are_kept_or_a_checkpoint_written(
        sections, tmp_path):
    """``cache=True`` keeps every tile: more than the memory allows is refused before training."""
    section = sections[0]
    n_tiles = len(section.shapes["he_tiles"])
    size_px = section.tables["he_tiles_table"].uns["tiles"]["size_px"]
    needed = n_tiles * 3 * size_px**2 * 2
    hx.settings.max_memory = needed // 2  # a tile read fits, all the tiles kept do not
    with pytest.raises(MemoryError, match=rf"Keeping {n_tiles} tiles .*cache=False"):
        hx.tl.pretrain(section, "he_tiles", checkpoint_dir=tmp_path, epochs=1, **TINY)
    assert list(tmp_path.iterdir()) == []
    encoder = hx.tl.pretrain(section, "he_tiles", checkpoint_dir=tmp_path, epochs=1,
                             cache=False, **TINY)  # the fix the error names
    assert encoder.metadata["pretraining"]["n_tiles"] == n_tiles
    assert [p.name for p in tmp_path.iterdir()] == ["pretrain_checkpoint.pt"]


def test_resuming_a_finished_pretraining_reads_no_tile(sections, tmp_path, monkeypatch):
    from histoexpr.pp import TileDataset

    section = sections[0]
    first = hx.tl.pretrain(section, "he_tiles", checkpoint_dir=tmp_path, epochs=1, **TINY)
    reads = []
    read = TileDataset.__getitem__
    monkeypatch.setattr(TileDataset, "__getitem__",
                        lambda self, index: reads.append(index) or read(self, index))
    again = hx.tl.pretrain(section, "he_tiles", checkpoint_dir=tmp_path, epochs=1, resume=True,
                           **TINY)
    assert reads == []  # every epoch was done: nothing to read for
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@bad_input("silently wrong", "`hx.tl.pretrain(..., checkpoint_dir=d, resume=True)` on a "
           "checkpoint made on other tiles (another um/px, tile size or tiles), lr or seed: it "
           "was resumed, its metadata claimed the new options and its normalisation came from "
           "the old tiles",
           says="ValueError: The checkpoint in ... was made by another run than the one asked "
           "now (... lr: saved 0.001, asked 0.5; ... seed: saved 0, asked 7; ... tiles_key: "
           "saved 't_a', asked 't_b'); only epochs may differ. Pass the same options (and "
           "tiles) to continue it, or overwrite=True (or another checkpoint_dir) to start afresh",
           fix="pass the options and tiles of the run to continue; `overwrite=True` or another "
           "`checkpoint_dir` to start afresh")
def test_resuming_another_run_is_refused_naming_each_option(sections, tmp_path):
    section, other = sections
    for sdata in sections:
        hx.pp.tile(sdata, "he", size_px=16, mpp=1.0, min_tissue=0.8, key_added="t_a")
    hx.pp.tile(section, "he", size_px=16, mpp=2.0, min_tissue=0.8, key_added="t_b")
    options = {**TINY, "epochs": 1, "lr": 1e-3, "seed": 0}
    first = hx.tl.pretrain(section, "t_a", checkpoint_dir=tmp_path, **options)
    checkpoint = tmp_path / _pretrain.CHECKPOINT_NAME
    before = checkpoint.read_bytes()

    with pytest.raises(ValueError, match="made by another run") as caught:
        hx.tl.pretrain(section, "t_b", checkpoint_dir=tmp_path, resume=True,
                       **{**options, "lr": 0.5, "seed": 7})
    n_a, n_b = (len(section.tables[f"{key}_table"]) for key in ("t_a", "t_b"))
    for part in ("tiles_key: saved 't_a', asked 't_b'", "mpp: saved 1.0, asked 2.0",
                 "size_um: saved 16.0, asked 32.0", "lr: saved 0.001, asked 0.5",
                 "seed: saved 0, asked 7", f"n_tiles: saved {n_a}, asked {n_b}",
                 "tiles_digest: saved", "overwrite=True"):
        assert part in str(caught.value), part
    assert "size_px" not in str(caught.value)  # 16 px both times: only what differs is named
    # each option alone, and the same geometry cut from another section's tiles
    for name, value in (("lr", 0.5), ("seed", 7), ("batch_size", 16), ("weight_decay", 0.0),
                        ("temperature", 0.5), ("warmup", 0.2), ("cache", False),
                        ("augment", hx.pp.augmentations("he", size_px=16, strength=0.3))):
        with pytest.raises(ValueError, match=rf"\({'augmentations' if name == 'augment' else name}"
                           r": saved .*, asked .*\); only epochs"):
            hx.tl.pretrain(section, "t_a", checkpoint_dir=tmp_path, resume=True,
                           **{**options, name: value})
    with pytest.raises(ValueError, match=r"tiles_digest: saved '\w+', asked '\w+'\); only"):
        hx.tl.pretrain(other, "t_a", checkpoint_dir=tmp_path, resume=True, **options)
    assert checkpoint.read_bytes() == before  # nothing trained, nothing written
    assert [p.name for p in tmp_path.iterdir()] == [_pretrain.CHECKPOINT_NAME]

    # the same options resume (to more epochs: the point of resuming)
    resumed = hx.tl.pretrain(section, "t_a", checkpoint_dir=tmp_path, resume=True,
                             **{**options, "epochs": 2})
    pretraining = resumed.metadata["pretraining"]
    assert pretraining["epochs"] == 2 and pretraining["tiles_key"] == "t_a"
    assert pretraining["loss"][0] == first.metadata["pretraining"]["loss"][0]
    assert resumed.metadata["normalisation"] == first.metadata["normalisation"]


@bad_input("silently wrong", "`hx.tl.pretrain(..., resume=True)` on a checkpoint written before "
           "checkpoints recorded their run: its tiles and options cannot be checked",
           says="ValueError: The checkpoint ... does not record the options and tiles it was "
           "made with ... Pass overwrite=True (or another checkpoint_dir) to start afresh",
           fix="`overwrite=True` or another `checkpoint_dir`; a checkpoint of an earlier "
               "version, with no seal either, is refused as a file that 'holds no digest of "
               "what was written': another `checkpoint_dir`, or move it away")
def test_a_checkpoint_without_its_run_is_not_resumed(sections, tmp_path):
    section = sections[0]
    options = {**TINY, "epochs": 1, "seed": 0}
    hx.tl.pretrain(section, "he_tiles", checkpoint_dir=tmp_path, **options)
    checkpoint = tmp_path / _pretrain.CHECKPOINT_NAME
    payload = torch.load(checkpoint, weights_only=True)
    assert payload["run"]["tiles_key"] == "he_tiles" and payload["run"]["lr"] == 1e-3
    del payload["run"]  # a sealed checkpoint without its run (sealed again: as written)
    from histoexpr._core.files import content_digest, seal_of

    del payload["seal"]
    payload["seal"] = seal_of(content_digest(payload), checkpoint)
    torch.save(payload, checkpoint)
    before = checkpoint.read_bytes()
    with pytest.raises(ValueError, match="does not record the options and tiles"):
        hx.tl.pretrain(section, "he_tiles", checkpoint_dir=tmp_path, resume=True, **options)
    assert checkpoint.read_bytes() == before
    hx.tl.pretrain(section, "he_tiles", checkpoint_dir=tmp_path, overwrite=True, **options)
    assert "run" in torch.load(checkpoint, weights_only=True)
    # as an earlier version wrote it, with no run and no seal either: refused as well, unchanged
    payload = torch.load(checkpoint, weights_only=True)
    del payload["run"], payload["seal"]
    torch.save(payload, checkpoint)
    before = checkpoint.read_bytes()
    with pytest.raises(FileExistsError, match="holds no digest of what was written"):
        hx.tl.pretrain(section, "he_tiles", checkpoint_dir=tmp_path, resume=True, **options)
    assert checkpoint.read_bytes() == before


@bad_input("obscure error", "`hx.tl.pretrain(..., checkpoint_dir='notes.txt')`, an existing "
           "file: an epoch was trained, then pathlib failed to make the folder",
           says="NotADirectoryError: `checkpoint_dir=... is a file, not a folder`, before any "
                "training",
           fix="pass a folder (made if absent), or None")
def test_pretrain_refuses_a_checkpoint_dir_that_is_a_file(sections, tmp_path, monkeypatch):
    from histoexpr.tl._features import _pretrain as module

    def never(*args, **kwargs):
        raise AssertionError("training began before checkpoint_dir was checked")

    monkeypatch.setattr(module, "train", never)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    for folder in (notes, notes / "run"):
        with pytest.raises(NotADirectoryError, match="is a file, not a folder|lies under the "
                                                     "file"):
            hx.tl.pretrain(sections[0], epochs=1, checkpoint_dir=folder, **TINY)
    assert notes.read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@bad_input("silently wrong", "`hx.tl.pretrain(..., cache='no')` or `resume='False'` (a string, "
           "true in Python)",
           says="TypeError: `cache must be True or False, got 'no'`",
           fix="pass True or False")
def test_pretrain_refuses_a_string_for_a_boolean(sections, tmp_path, monkeypatch):
    from histoexpr.tl._features import _pretrain as module

    monkeypatch.setattr(module, "train", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(TypeError, match="cache must be True or False, got 'no'"):
        hx.tl.pretrain(sections[0], epochs=1, cache="no", **TINY)
    with pytest.raises(TypeError, match="resume must be True or False, got 'False'"):
        hx.tl.pretrain(sections[0], epochs=1, resume="False", checkpoint_dir=tmp_path, **TINY)
    assert list(tmp_path.iterdir()) == []


@bad_input("obscure error", "`hx.tl.probe` where every observation has a NaN feature or target, "
           "or with `n_folds=1` (sklearn's n_splits errors)",
           says="ValueError: `probe: 20 of 20 observations have missing (NaN) or infinite "
                "features or a missing target and are left out, leaving 0` / `n_folds must be "
                "an integer in [2, inf]`",
           fix="fill or drop the missing values, or pass n_folds >= 2",
           match=r"20 of 20 observations have missing \(NaN\) or infinite features or a "
                 r"missing target and are left out, leaving 0|n_folds must be an integer in "
                 r"\[2, inf\]")
def test_probe_names_too_few_observations_and_too_few_folds():
    x = np.random.default_rng(0).random((20, 5))
    with pytest.raises(ValueError, match=r"20 of 20 observations .* leaving 0"):
        hx.tl.probe(x, np.full(20, np.nan))
    with pytest.raises(ValueError, match=r"20 of 20 observations .* leaving 0"):
        hx.tl.probe(np.full((20, 5), np.nan), np.arange(20.0))
    with pytest.raises(ValueError, match=r"n_folds must be an integer in \[2, inf\], got 1"):
        hx.tl.probe(x, np.arange(20.0), n_folds=1)
    target = np.arange(20.0)
    target[3:] = np.nan
    with pytest.raises(ValueError, match=r"leaving 3, too few to hold out 5 folds.*n_folds=3"):
        hx.tl.probe(x, target)
    assert len(hx.tl.probe(x, target, n_folds=3)) == 3
