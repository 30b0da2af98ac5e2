"""Embedding throughput of ``hx.tl.embed`` against a bare forward pass, and MIL training speed.

Run: ``.venv/bin/python benchmarks/bench_mil.py [--size-um 1200] [--encoder small_cnn]``;
``bench_mil.py accuracy`` runs the nested her2st MIL benchmark (regression, attention and
contribution maps, classification) described in ``benchmarks/README.md``.

1. Tiles/s of ``hx.tl.embed`` (tiles read lazily through ``TileDataset``, batched, encoded)
   against the same encoder's forward pass on the same tiles already stacked in memory: their
   ratio is the cost of reading tiles. Each is timed after a warm-up pass.
2. Bags/s of ``hx.tl.fit(..., model="abmil")`` training on cached tile features (synthetic
   bags of random features, so only the training is timed).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

import histoexpr as hx


def embedding(size_um: float, encoder: str, batch_size: int, device: str) -> dict:
    from histoexpr.tl._features._embed import resolve_encoder

    sdata = hx.datasets.synthetic_section(seed=0, size_um=size_um)
    hx.pp.tile(sdata, "he", size_px=224, mpp=0.5, min_tissue=0.0)
    dataset = hx.pp.TileDataset(sdata, "he_tiles")
    n_tiles = len(dataset)
    hx.tl.embed(sdata, "he_tiles", encoder=encoder, key_added="warm", batch_size=batch_size,
                device=device)
    start = time.perf_counter()
    hx.tl.embed(sdata, "he_tiles", encoder=encoder, key_added="timed", batch_size=batch_size,
                device=device)
    embed_s = time.perf_counter() - start

    network, _, norm = resolve_encoder(encoder, in_channels=3)
    network = network.to(device).eval()
    tiles = torch.stack([dataset[i]["image"] for i in range(n_tiles)]).to(device)
    mean = std = None
    if norm is not None:
        mean = torch.as_tensor(norm["mean"], device=device).reshape(-1, 1, 1)
        std = torch.as_tensor(norm["std"], device=device).reshape(-1, 1, 1)

    def bare() -> None:
        with torch.inference_mode():
            for start in range(0, n_tiles, batch_size):
                batch = tiles[start: start + batch_size]
                network(batch if mean is None else (batch - mean) / std)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    bare()
    start = time.perf_counter()
    bare()
    bare_s = time.perf_counter() - start
    return {"encoder": encoder, "tiles": n_tiles, "embed_tiles_per_s": n_tiles / embed_s,
            "bare_tiles_per_s": n_tiles / bare_s, "ratio": bare_s / embed_s}


def mil_training(n_bags: int, tiles_per_bag: int, n_features: int, device: str) -> dict:
    """Bags/s of abmil training on cached features (pseudo-bulk bags of random features)."""
    import anndata as ad
    import pandas as pd
    from scipy import sparse
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    rng = np.random.default_rng(0)
    n_tiles = n_bags * tiles_per_bag
    tiles = ad.AnnData(obs=pd.DataFrame({"tile_id": np.arange(n_tiles), "region": "t"},
                                        index=np.arange(n_tiles).astype(str)))
    tiles.obs["region"] = tiles.obs["region"].astype("category")
    tiles.obsm["X_cached"] = rng.standard_normal((n_tiles, n_features)).astype(np.float32)
    tiles.uns["embeddings"] = {"X_cached": {"encoder": "random"}}
    membership = sparse.csr_matrix((np.ones(n_tiles, np.float32),
                                    (np.repeat(np.arange(n_bags), tiles_per_bag),
                                     np.arange(n_tiles))), shape=(n_bags, n_tiles))
    counts = rng.poisson(20, (n_bags, 50)).astype(np.float32)
    bags = ad.AnnData(counts, obs=pd.DataFrame({"bag_id": np.arange(n_bags), "region": "b"},
                                               index=[f"bag_{i}" for i in range(n_bags)]),
                      var=pd.DataFrame(index=[f"g{i}" for i in range(50)]))
    bags.obs["region"] = bags.obs["region"].astype("category")
    bags.obsm["tiles"] = membership
    bags.uns["bags"] = {"tiles_key": "t"}
    warnings.filterwarnings("ignore", message="The table is annotating")
    sdata = SpatialData(tables={
        "t_table": TableModel.parse(tiles, region="t", region_key="region",
                                    instance_key="tile_id"),
        "bags_table": TableModel.parse(bags, region="b", region_key="region",
                                       instance_key="bag_id")})
    epochs = 5
    start = time.perf_counter()
    network = hx.tl.fit(sdata, model="abmil", tiles_key="t", epochs=epochs, val_fraction=0,
                        batch_size=8, max_tiles=512, device=device, seed=0)
    seconds = network.metadata["history"]["seconds"]
    total = time.perf_counter() - start
    return {"bags": n_bags, "tiles_per_bag": tiles_per_bag, "features": n_features,
            "train_bags_per_s": n_bags * epochs / seconds, "fit_s_with_setup": total}


def main() -> None:
    import sys

    if sys.argv[1:2] == ["accuracy"]:  # the nested her2st benchmark (its own options)
        sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
        from _mil_accuracy import main as accuracy

        accuracy(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-um", type=float, default=1200.0)
    parser.add_argument("--encoder", action="append", default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    hx.settings.progress_bar = False
    device = hx.settings.device if args.device is None else args.device
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    print("| encoder | tiles | hx.tl.embed tiles/s | bare forward tiles/s | ratio |")
    print("|---|---|---|---|---|")
    for encoder in args.encoder or ["handcrafted", "small_cnn", "resnet18"]:
        r = embedding(args.size_um, encoder, args.batch_size, device)
        print(f"| {r['encoder']} | {r['tiles']} | {r['embed_tiles_per_s']:.1f} | "
              f"{r['bare_tiles_per_s']:.1f} | {r['ratio']:.2f} |")
    print("\n| bags | tiles/bag | features | training bags/s | fit s (with setup) |")
    print("|---|---|---|---|---|")
    for n_features, tiles_per_bag in [(23, 200), (512, 200), (512, 2000)]:
        r = mil_training(200, tiles_per_bag, n_features, device)
        print(f"| {r['bags']} | {r['tiles_per_bag']} | {r['features']} | "
              f"{r['train_bags_per_s']:.1f} | {r['fit_s_with_setup']:.1f} |")


if __name__ == "__main__":
    main()
