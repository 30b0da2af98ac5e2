"""Tiles per second of ``hx.tl.embed`` against a bare forward pass of the same encoder.

The bare pass runs the encoder on one batch of random tiles already on the device, over and
over (the encoder's ceiling); ``embed`` reads every tile from the section's image, normalises it
and copies it to the device as it must. Their ratio says how much of the device the pipeline
uses (target >= 0.8 on a GPU). Both run in the same precision, in inference mode, with the same
batch size and (on CUDA) the same channels-last layout for the CNN; the first batches are a
warm-up and not timed.

Encoders: a ResNet-50 (MONAI, ``hx.models.TileEncoder(arch="resnet50")``) and a ViT-L/16
(transformers ``ViTConfig()`` defaults: 24 layers, 1024 wide; random weights saved to a temporary
folder and read back through ``encoder="hf:<folder>"``), each in fp32 and bf16.

    python benchmarks/bench_embed_gpu.py                 # on a GPU: 224 px tiles, ~3,900 tiles
    python benchmarks/bench_embed_gpu.py --small         # on a CPU: 112 px tiles, a ViT-S-sized
                                                         # ViT/16, ~50 tiles, fp32 only

Prints one line per (encoder, precision) and a Markdown table at the end, with the batch size
``hx.tl.embed(batch_size=None)`` would choose there (from the GPU's free memory and a probe
batch on CUDA; 64 elsewhere).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

import histoexpr as hx


def section(size_um: float, tile_px: int, stride_px: int):
    sdata = hx.datasets.synthetic_section(seed=0, size_um=size_um, transcripts=False,
                                          spots=False)
    hx.pp.tile(sdata, "he", size_px=tile_px, mpp=0.5, stride_px=stride_px, min_tissue=0.0)
    return sdata


def vit_folder(folder: Path, *, small: bool, tile_px: int) -> Path:
    import transformers

    if small:  # the ViT-S/16 width and heads, 4 layers: a CPU can run it in the small mode
        config = transformers.ViTConfig(hidden_size=384, num_hidden_layers=4,
                                        num_attention_heads=6, intermediate_size=1536,
                                        image_size=tile_px, patch_size=16)
    else:  # ViT-L/16
        config = transformers.ViTConfig(hidden_size=1024, num_hidden_layers=24,
                                        num_attention_heads=16, intermediate_size=4096,
                                        image_size=tile_px, patch_size=16)
    torch.manual_seed(0)
    transformers.ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": tile_px, "width": tile_px}).save_pretrained(
        folder)
    return folder


def bare_tiles_per_s(network, tile_px: int, batch_size: int, n_batches: int, device: str,
                     precision: str) -> float:
    """Forward passes on one random batch already on the device."""
    from histoexpr._core.devices import autocast, resolve_precision, use_channels_last

    hx.settings.precision = precision
    network = network.to(device).eval()
    x = torch.rand(batch_size, 3, tile_px, tile_px, device=device)
    if use_channels_last(network, device):
        network = network.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    amp = resolve_precision(device)
    with torch.inference_mode(), autocast(amp):
        for _ in range(2):  # warm-up
            network(x)
        _sync(device)
        began = time.perf_counter()
        for _ in range(n_batches):
            network(x).float()
        _sync(device)
    network.to(memory_format=torch.contiguous_format)
    return n_batches * batch_size / (time.perf_counter() - began)


def embed_tiles_per_s(sdata, encoder, batch_size: int, device: str, precision: str) -> float:
    hx.settings.precision = precision
    n_tiles = sdata.tables["he_tiles_table"].n_obs
    # warm-up on the first tiles (loads the encoder, builds kernels), not timed
    hx.tl.embed(sdata, "he_tiles", encoder=encoder, batch_size=batch_size, device=device,
                key_added="X_warm", overwrite=True)
    _sync(device)
    began = time.perf_counter()
    hx.tl.embed(sdata, "he_tiles", encoder=encoder, batch_size=batch_size, device=device,
                key_added="X_bench", overwrite=True)
    _sync(device)
    return n_tiles / (time.perf_counter() - began)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="the CPU mode")
    parser.add_argument("--device", default=None, help="default: hx.settings.device")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--precisions", default=None, help="e.g. fp32,bf16")
    args = parser.parse_args()
    started, cpu_started = time.perf_counter(), time.process_time()
    from histoexpr._core.devices import auto_batch_size, resolve_precision, resolve_workers

    device = args.device or hx.settings.device
    hx.settings.progress_bar = False
    if args.small:
        tile_px, batch_size, size_um, stride_px = 112, args.batch_size or 16, 240, 56
        precisions = (args.precisions or "fp32").split(",")
    else:
        tile_px, batch_size, size_um, stride_px = 224, args.batch_size or 256, 3600, 112
        precisions = (args.precisions or "fp32,bf16").split(",")
    sdata = section(size_um, tile_px, stride_px)
    n_tiles = sdata.tables["he_tiles_table"].n_obs
    n_batches = max(3, n_tiles // batch_size)
    print(f"device={device}, {n_tiles} tiles of {tile_px} px, batch {batch_size}, "
          f"n_workers={resolve_workers(device)}, torch {torch.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights, on purpose
        folder = vit_folder(Path(tmp) / "vit", small=args.small, tile_px=tile_px)
        vit = hx.models.HuggingFaceEncoder(path=str(folder))
        resnet = hx.models.TileEncoder(arch="resnet50", in_channels=3)
        for name, encoder in (("ResNet-50 (MONAI)", resnet),
                              ("ViT-S/16, 4 layers" if args.small else "ViT-L/16", vit)):
            for precision in precisions:
                bare = bare_tiles_per_s(encoder, tile_px, batch_size, n_batches, device,
                                        precision)
                piped = embed_tiles_per_s(sdata, encoder, batch_size, device, precision)
                # what embed(batch_size=None) would choose here (64 off CUDA)
                chosen = auto_batch_size(encoder.to(device).eval(), (3, tile_px, tile_px),
                                         device, resolve_precision(device, precision))
                rows.append((name, precision, piped, bare, piped / bare, chosen))
                print(f"{name} {precision}: embed {piped:.1f} tiles/s, bare forward "
                      f"{bare:.1f} tiles/s, ratio {piped / bare:.2f}; batch_size=None "
                      f"chooses {chosen}", flush=True)
    print("\n| encoder | precision | embed tiles/s | bare forward tiles/s | ratio | "
          "batch_size=None chooses |")
    print("|---|---|---|---|---|---|")
    for name, precision, piped, bare, ratio, chosen in rows:
        print(f"| {name} | {precision} | {piped:.1f} | {bare:.1f} | {ratio:.2f} | {chosen} |")
    print(f"\nwhole run: {time.perf_counter() - started:.0f} s wall, "
          f"{time.process_time() - cpu_started:.0f} s CPU (this process)")


if __name__ == "__main__":
    main()
