"""Model files, pretraining checkpoints and TRIDENT files: replaced only as histoexpr wrote them."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch
from _catalogue import bad_input

import histoexpr as hx


@bad_input("data lost", "`hx.io.save_model(model, path, overwrite=True)` where the model file "
           "histoexpr wrote was since edited by the user (metadata notes, fine-tuned weights "
           "saved back with torch.save): its format mark alone made it histoexpr's",
           says="FileExistsError: ... is a file that hx.io.save_model wrote, but it changed "
           "since histoexpr wrote it",
           fix="save the model under another name, or move the edited file away")
def test_a_model_file_edited_since_is_not_replaced(tmp_path):
    model = hx.models.TileEncoder(arch="small_cnn", in_channels=3)
    path = hx.io.save_model(model, tmp_path / "enc.pt")
    hx.io.save_model(model, path, overwrite=True)  # as written: replaced
    payload = torch.load(path, weights_only=True)
    payload["metadata"]["my_notes"] = "fine-tuned by hand on 40 more slides"
    torch.save(payload, path)
    edited = path.read_bytes()
    with pytest.raises(FileExistsError, match="changed since histoexpr wrote it"):
        hx.io.save_model(model, path, overwrite=True)
    assert path.read_bytes() == edited
    payload["metadata"].pop("my_notes")
    payload["state_dict"] = {k: v + 1 for k, v in payload["state_dict"].items()}
    torch.save(payload, path)  # the weights alone changed
    with pytest.raises(FileExistsError, match="changed since histoexpr wrote it"):
        hx.io.save_model(model, path, overwrite=True)
    copy = tmp_path / "copy.pt"
    hx.io.save_model(model, tmp_path / "orig.pt")
    shutil.copy2(tmp_path / "orig.pt", copy)
    with pytest.raises(FileExistsError, match="written at another path"):
        hx.io.save_model(model, copy, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.pt", "enc.pt", "orig.pt"]


@pytest.fixture(scope="module")
def embedded():
    sdata = hx.datasets.synthetic_section(seed=0, size_um=200, transcripts=False, spots=False)
    hx.pp.tile(sdata, "he", size_um=50, mpp=1.0, min_tissue=0)
    hx.tl.embed(sdata, "he_tiles", encoder="handcrafted")
    return sdata


@bad_input("data lost", "`hx.io.write_trident_h5(sdata, path, overwrite=True)` where the user "
           "added a dataset (their annotations) to the .h5 histoexpr wrote: it was dropped",
           says="FileExistsError: ... is a file that hx.io.write_trident_h5 wrote, but it "
           "changed since histoexpr wrote it",
           fix="write to another path, or move the annotated file away")
def test_a_trident_file_added_to_since_is_not_replaced(tmp_path, embedded):
    path = hx.io.write_trident_h5(embedded, tmp_path / "slide.h5")
    hx.io.write_trident_h5(embedded, path, overwrite=True)  # as written: replaced
    with h5py.File(path, "a") as handle:
        handle.create_dataset("my_annotations", data=np.arange(10))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="changed since histoexpr wrote it"):
        hx.io.write_trident_h5(embedded, path, overwrite=True)
    assert path.read_bytes() == before
    with h5py.File(path, "a") as handle:  # an attribute changed is a change too
        del handle["my_annotations"]
        handle["coords"].attrs["patch_level"] = 1
    with pytest.raises(FileExistsError, match="changed since"):
        hx.io.write_trident_h5(embedded, path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide.h5"]


@pytest.fixture(scope="module")
def tiles():
    sdata = hx.datasets.synthetic_section(seed=0, size_um=120, transcripts=False, spots=False)
    hx.pp.tile(sdata, "he", size_px=16, mpp=2.0, min_tissue=0.5)
    return sdata


_RUN = {"epochs": 1, "encoder": "small_cnn", "batch_size": 8, "seed": 0}


@bad_input("data lost", "`hx.tl.pretrain(..., resume=True)` where `pretrain_checkpoint.pt` is a "
           "link to a shared checkpoint: the first epoch replaced the link by a plain file",
           says="FileExistsError: .../pretrain_checkpoint.pt is a symbolic link (to ...); "
           "histoexpr does not replace links",
           fix="pass the folder of the shared checkpoint, or copy it")
def test_pretrain_checkpoints_are_replaced_and_resumed_only_as_written(tmp_path, tiles):
    from histoexpr.tl._features._pretrain import CHECKPOINT_NAME

    shared = tmp_path / "shared"
    hx.tl.pretrain(tiles, "he_tiles", checkpoint_dir=shared, **_RUN)
    checkpoint = shared / CHECKPOINT_NAME
    hx.tl.pretrain(tiles, "he_tiles", checkpoint_dir=shared, resume=True,
                   **{**_RUN, "epochs": 2})  # its own: resumed and replaced
    hx.tl.pretrain(tiles, "he_tiles", checkpoint_dir=shared, overwrite=True, **_RUN)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / CHECKPOINT_NAME).symlink_to(checkpoint)
    before = checkpoint.read_bytes()
    for option in ("resume", "overwrite"):
        with pytest.raises(FileExistsError, match="is a symbolic link"):
            hx.tl.pretrain(tiles, "he_tiles", checkpoint_dir=mine, **{option: True}, **_RUN)
        assert (mine / CHECKPOINT_NAME).is_symlink() and checkpoint.read_bytes() == before
    payload = torch.load(checkpoint, weights_only=True)
    payload["state"]["my_note"] = "kept"
    torch.save(payload, checkpoint)
    edited = checkpoint.read_bytes()
    for option in ("resume", "overwrite"):
        with pytest.raises(FileExistsError, match="changed since histoexpr wrote it"):
            hx.tl.pretrain(tiles, "he_tiles", checkpoint_dir=shared, **{option: True},
                           **{**_RUN, "epochs": 3})
        assert checkpoint.read_bytes() == edited
    assert sorted(p.name for p in shared.iterdir()) == [CHECKPOINT_NAME]
