"""Nested her2st MIL benchmark: abmil against mean-pool baselines on pseudo-bulk bags.

Run through ``bench_mil.py accuracy``. Sections C2, C3, C4 of her2st, one 200 um tile per spot,
1 mm bags every 400 um; leave one section out; every choice (genes, features, the abmil variant,
ridge / logistic penalties, class thresholds) is made on the training sections only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

import histoexpr as hx

DATA = Path(__file__).parent / "_data" / "mil_features"
SECTIONS = ("C2", "C3", "C4")


def shared_data() -> Path:
    if "HISTOEXPR_SHARED_DATA" in os.environ:
        return Path(os.environ["HISTOEXPR_SHARED_DATA"])
    for folder in [Path.cwd(), *Path.cwd().resolve().parents]:
        if (folder / "shared" / "data").is_dir():
            return folder / "shared" / "data"
    raise FileNotFoundError("set HISTOEXPR_SHARED_DATA to the folder of the real data sets")


def read_section(name: str):
    her2st = shared_data() / "her2st"
    sdata = hx.io.read_st(her2st / "counts" / f"{name}.tsv.gz",
                          her2st / "spots" / f"{name}_selection.tsv",
                          next((her2st / "images").glob(f"{name}_*.jpg")))
    hx.pp.tile(sdata, "he", size_um=200, mpp=2.0, centers="spots", min_tissue=0.0)
    return sdata


def cached_features(name: str, sdata) -> dict[str, np.ndarray]:
    """Tile features of a section (cached, keyed by spot): hand-crafted and a random CNN.

    ``handcrafted``: colour, stain and texture of the 200 um tiles at 2 um/px (23 features);
    ``cnn``: the small CNN of tutorial 05 at random initialisation (seed 0, width 32, pooled
    levels), 192 um spot tiles at 1 um/px; chosen by nobody, so no choice to nest.
    """
    import torch

    path = DATA / f"{name}.npz"
    spots = sdata.tables["he_tiles_table"].obs["spot_id"].to_numpy()
    if path.exists():
        stored = np.load(path, allow_pickle=False)
        order = pd.Index(stored["spot_id"]).get_indexer(spots)
        assert (order >= 0).all(), "cache made from other tiles; delete it"
        return {k: stored[k][order] for k in ("handcrafted", "cnn")}
    DATA.mkdir(parents=True, exist_ok=True)
    hx.tl.embed(sdata, "he_tiles", encoder="handcrafted", key_added="X_handcrafted")
    hx.pp.tile(sdata, "he", size=192, mpp=1.0, centers="spots", min_tissue=0.0,
               key_added="he_cnn_tiles")
    torch.manual_seed(0)
    network = hx.models.TileEncoder(arch="small_cnn", in_channels=3, width=32, pool_levels=True)
    hx.tl.embed(sdata, "he_cnn_tiles", encoder=network, key_added="X_cnn")
    cnn_table = sdata.tables["he_cnn_tiles_table"]
    rows = pd.Index(cnn_table.obs["spot_id"]).get_indexer(spots)
    assert (rows >= 0).all()
    features = {"handcrafted": np.asarray(sdata.tables["he_tiles_table"].obsm["X_handcrafted"]),
                "cnn": np.asarray(cnn_table.obsm["X_cnn"])[rows]}
    np.savez(path, spot_id=spots.astype(str), **features)
    return features


def load_sections() -> dict:
    """Sections with tiles, every feature set in the tile table and the pseudo-bulk bags."""
    sections = {}
    for name in SECTIONS:
        start = time.process_time()
        sdata = read_section(name)
        features = cached_features(name, sdata)
        table = sdata.tables["he_tiles_table"]
        for key, values in features.items():
            table.obsm[f"X_{key}"] = values.astype(np.float32)
        table.uns["embeddings"] = {f"X_{k}": {"encoder": k} for k in features}
        hx.pp.pseudobulk(sdata, "he_tiles", size_um=1000, stride_um=400, min_spots=4)
        sections[name] = sdata
        print(f"{name}: {table.n_obs} tiles, {sdata.tables['bags_table'].n_obs} bags, "
              f"{time.process_time() - start:.0f} CPU s", flush=True)
    return sections


if __name__ == "__main__":
    load_sections()
