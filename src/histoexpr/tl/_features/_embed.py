"""Tile embeddings: features of every tile, streamed through the tile dataset."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..._core.devices import (
    auto_batch_size,
    autocast,
    inference_network,
    loader_options,
    resolve_precision,
    reused_host_memory,
)
from ..._core.image import check_pixel_size_stated, image_levels
from ..._core.image_facts import image_coverage, image_fingerprint
from ..._core.logs import log_added, logged_step, logger, progress
from ..._core.ownership import require_element
from ..._core.records import EmbeddingRecord, WriterRecord, current_within
from ..._core.seeds import resolve_device
from ..._core.validate import check_bool, check_store_name
from ._squidpy_features import parse_squidpy_encoder, squidpy_features

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ...models import Network

#: normalisation of learned encoders whose metadata has none (tiles are in [0, 1])
DEFAULT_NORMALISATION = {"mean": 0.5, "std": 0.25}
IMAGENET_NORMALISATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
#: the writer recorded with the features this step makes (``uns["embeddings"][key]``)
STEP = "hx.tl.embed"
#: bytes a feature of a tile takes while encoding: float32 in its batch, then concatenated
_FEATURE_BYTES = 8


@logged_step("embedding tiles")
def embed(
    sdata: SpatialData,
    tiles_key: str = "he_tiles",
    *,
    encoder: str | Path | Network | Sequence[str | Path | Network] = "handcrafted",
    checkpoint: str | Path | None = None,
    image_key: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    key_added: str | None = None,
    overwrite: bool = False,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """Compute features of every tile and store them in the tile table's ``obsm``.

    Tiles are read lazily through :class:`histoexpr.pp.TileDataset` in batches, so memory does
    not grow with the slide's pixels; the features' memory (``n_tiles x dim x 8`` bytes) is
    estimated before the tiles are read (after the first batch for encoders that do not state
    their output size) and refused with a :class:`MemoryError` when it exceeds the limit.

    Parameters
    ----------
    sdata
        The section, tiled by :func:`histoexpr.pp.tile`.
    tiles_key
        Key of the tiles; features go to the table ``f"{tiles_key}_table"``.
    encoder
        ``"handcrafted"`` (colour, stain and texture statistics), an architecture of
        :class:`histoexpr.models.TileEncoder` (``"small_cnn"``, ``"resnet18"``...; random
        initialisation unless ``checkpoint`` is given), ``"squidpy"`` (squidpy's summary,
        histogram and texture features, the classic baseline; ``"squidpy:summary+histogram"``
        picks groups), ``"timm:<model name>"`` (needs the optional ``timm`` extra; weights from
        ``checkpoint``), ``"hf:<folder>"`` (a Hugging Face transformers vision model saved in a
        local folder, e.g. Phikon or Phikon-v2, with its own normalisation and input size: see
        :class:`histoexpr.models.HuggingFaceEncoder`, which also offers other poolings), a
        histoexpr model file (``.pt``, e.g. from :func:`histoexpr.tl.pretrain`), or a network
        object. An architecture or ``timm:`` name without ``checkpoint`` has **random
        weights**: a :class:`UserWarning` says so. Nothing is ever downloaded. A list of these
        concatenates their features (e.g. ``["squidpy", "handcrafted"]``, named
        ``"squidpy+handcrafted"``).
    checkpoint
        Local weights for an architecture name: a histoexpr model file or a state dict saved
        with :func:`torch.save` (read with ``weights_only=True``). Not with a list of encoders.
    image_key
        Image to read the tiles from; defaults to the one they were cut from.
    batch_size
        Tiles per forward pass; ``None`` chooses: 64 on a CPU (or MPS); on a CUDA GPU, half
        the GPU's free memory divided by the memory one tile takes in a forward pass of this
        encoder (measured on a probe batch of 8 tiles), a multiple of 8, at most 512 (the
        choice is logged; see the GPU page of the documentation). The batch size does not
        change the features (up to float rounding on a GPU).
    device
        Torch device; ``None`` uses ``hx.settings.device``.
    key_added
        Key in ``obsm``; defaults to ``f"X_{name}"`` with the encoder's name. It becomes a
        folder name when the section is saved, so it must be one plain name (no ``/``; letters,
        digits and ``_``, ``-``, ``.``, ``+``): checked before any work.
    overwrite
        Replace features under ``key_added`` that ``hx.tl.embed`` wrote before (recorded in
        ``uns["embeddings"]``); a matrix put there otherwise (e.g. the user's own) is never
        replaced.
    transform
        Applied to every tile ``(C, H, W)`` in [0, 1] before any encoder sees it, e.g. a stain
        normalisation from :func:`histoexpr.pp.stain_normaliser`; its ``spec`` (if any) is
        recorded with the features.

    Returns
    -------
    Nothing; adds ``obsm[key_added]`` (tiles x features, float32) and
    ``uns["embeddings"][key_added]`` (what computed them: the encoder's name and
    ``fingerprint``, the image and its ``image_fingerprint`` (a digest of its shape, pixel size
    and sampled pixels: features of an image replaced since are not reused), ``mpp`` and
    ``size_px`` of the tiles, and the writer record
    ``"histoexpr"``: ``{"step": "hx.tl.embed", "key": key_added}``) to the tile table. The
    fingerprint of an architecture at random weights (no ``checkpoint``) holds a digest of the
    weights drawn (``"<name>:random:<digest>"``), so features of two random draws (another seed)
    are never taken for the same. Tiles
    that lie wholly off the image have no pixels: their features are NaN, and a warning names
    how many (their number is recorded as ``n_off_image``). Tiles partly off the image are read
    with black outside it (a warning names how many).
    """
    check_bool("overwrite", overwrite)
    from ...pp import TileDataset

    if key_added is not None:
        _check_features_key(key_added)
    require_element(sdata, tiles_key, "shapes")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (or None to choose), got {batch_size}.")
    dataset = TileDataset(sdata, tiles_key, image_key=image_key, transform=transform)
    table = sdata.tables[f"{tiles_key}_table"]
    n_channels = int(image_levels(sdata, dataset.image_key)[0].data.sizes["c"])
    encoders = _encoder_list(encoder, checkpoint)
    resolved = [_resolve(one, n_channels=n_channels, checkpoint=checkpoint) for one in encoders]
    if any(_trained_mpp(network) is not None for _, _, network in resolved):
        # an encoder trained at a pixel size describes structures of a physical size
        check_pixel_size_stated(sdata, dataset.image_key)
    name = "+".join(one_name for one_name, _, _ in resolved)
    key_added = _check_features_key(f"X_{name}") if key_added is None else key_added
    if key_added in table.obsm and not overwrite:
        raise KeyError(f"obsm[{key_added!r}] of the tile table already exists; pass "
                       "overwrite=True to replace it, or choose another key_added.")
    if key_added in table.obsm and key_added not in table.uns.get("embeddings", {}):
        # overwrite=True replaces only features hx.tl.embed wrote (they have a record)
        raise KeyError(f"obsm[{key_added!r}] of the tile table was not written by hx.tl.embed "
                       "(uns['embeddings'] has no record of it), so histoexpr does not replace "
                       "it, even with overwrite=True; choose another key_added.")
    fingerprint = encoder_fingerprint(encoders, checkpoint=checkpoint)
    random = [checkpoint is None and (_has_random_weights(one) or (
        isinstance(one, str) and one.startswith("hf:")
        and getattr(network, "has_weights", True) is False))
        for one, (_, _, network) in zip(encoders, resolved, strict=True)]
    if any(random):
        # random weights (an architecture name without checkpoint, an hf: folder without
        # weights) differ with the seed: their digest tells such features apart
        fingerprint = "+".join(
            f"{one}:random:{_weights_digest(network)}" if drawn else encoder_fingerprint(one)
            for one, (_, _, network), drawn in zip(encoders, resolved, random, strict=True))
    coverage = image_coverage(sdata, dataset.image_key, np.asarray(table.obsm["spatial"]),
                              dataset.size_um)
    off_image = _report_off_image(coverage, tiles_key, dataset.image_key)
    pixels = image_fingerprint(sdata, dataset.image_key)
    parts = [compute(dataset, batch_size=batch_size, device=device) for _, compute, _ in resolved]
    features = np.hstack([values for values, _ in parts])
    features[off_image] = np.nan
    record = EmbeddingRecord(
        encoder=name, fingerprint=fingerprint, image_key=dataset.image_key, mpp=dataset.mpp,
        size_px=dataset.size_px, n_off_image=int(off_image.sum()),
        transform=None if transform is None else getattr(transform, "spec",
                                                         type(transform).__name__),
        parts=None if len(parts) == 1 else {
            one_name: int(values.shape[1])
            for (one_name, _, _), (values, _) in zip(resolved, parts, strict=True)},
        feature_names=([n for _, names in parts for n in names]
                       if all(names for _, names in parts) else None),
        n_features=int(features.shape[1]), writer=WriterRecord.now(STEP, key_added),
        # the pixels they were made from: features of an image replaced since are not reused
        extra={"image_fingerprint": pixels})
    table.obsm[key_added] = features
    table.uns.setdefault("embeddings", {})[key_added] = record.to_uns()
    log_added("tables", f"{tiles_key}_table", f"obsm[{key_added!r}]: {features.shape[1]} "
              f"features of {features.shape[0]} tiles")


def _check_features_key(key: Any) -> str:
    """``key`` after checking it can name the features in ``obsm`` (a folder once saved).

    Keys chosen by another histoexpr step for the features it makes for itself (inside
    :func:`histoexpr._core.records.made_within`, e.g. the spot regressor's) are that step's to
    check: models trained by an earlier version keep the keys they recorded.
    """
    if current_within() is None:
        check_store_name("key_added", key, what="set of features in the tile table's obsm")
    return key


def check_encoder(encoder: Any, *, checkpoint: str | Path | None = None,
                  in_channels: int | None = None) -> None:
    """Refuse an ``encoder`` (and ``checkpoint``) that :func:`embed` could not use, before work.

    For the steps that embed later, after other work (the spot regressor's ``fit``, which tiles
    the sections first; :func:`histoexpr.tl.embed_cohort`, which plans every slide first). With
    ``in_channels`` (the image's channels), each encoder is resolved as :func:`embed` resolves
    it: a model file is loaded, a checkpoint's weights fitted, the channels compared. Without,
    the channels are not known yet: names are checked, model files loaded, a ``squidpy``
    spec parsed; an ``"hf:<folder>"`` or ``"timm:<name>"`` is left to :func:`embed`.
    """
    from ...models import Network, TileEncoder

    encoders = _encoder_list(encoder, checkpoint)
    for one in encoders:
        if isinstance(one, str) and one.split(":")[0] == "squidpy":
            parse_squidpy_encoder(one)
        elif in_channels is not None:
            with warnings.catch_warnings():  # random weights: embed itself warns of them
                warnings.simplefilter("ignore", UserWarning)
                resolve_encoder(one, in_channels=in_channels, checkpoint=checkpoint)
        elif _is_model_file(one):
            from ...io import load_model

            load_model(one, device="cpu")  # missing, unreadable or no model file: said here
        elif not (isinstance(one, Network) or one == "handcrafted"
                  or one in TileEncoder.ARCHITECTURES
                  or (isinstance(one, str) and one.startswith(("timm:", "hf:")))):
            raise _unknown_encoder(one)


def _is_model_file(encoder: Any) -> bool:
    """Whether an ``encoder`` argument names a histoexpr model file."""
    return isinstance(encoder, Path) or (isinstance(encoder, str) and encoder.endswith(".pt"))


def _unknown_encoder(encoder: Any) -> ValueError:
    from ...models import TileEncoder

    return ValueError(
        f"Unknown encoder {encoder!r}: use 'handcrafted', one of {TileEncoder.ARCHITECTURES}, "
        "'squidpy', 'timm:<name>', 'hf:<folder>', a histoexpr model file (.pt) or a histoexpr "
        "network.")


def _report_off_image(coverage: np.ndarray, tiles_key: str, image_key: str) -> np.ndarray:
    """Warn how many tiles lie wholly or partly off the image; the mask of the wholly-off ones."""
    off = coverage <= 1e-9
    partly = ~off & (coverage < 1 - 1e-6)
    if off.all():
        raise ValueError(f"All {off.size} tiles {tiles_key!r} lie off the image {image_key!r}: "
                         "they were made on another image or in other coordinates. Tile this "
                         "image (hx.pp.tile) or give the image the tiles were made on.")
    if off.any():
        logger.warning("%d of %d tiles %r lie wholly off the image %r: they have no pixels, so "
                       "their features are NaN (left out by hx.tl.fit and hx.tl.predict). Drop "
                       "those tiles, or check the spots' coordinates.", int(off.sum()), off.size,
                       tiles_key, image_key)
    if partly.any():
        logger.warning("%d of %d tiles %r lie partly off the image %r: the part outside the "
                       "image is read as black.", int(partly.sum()), off.size, tiles_key,
                       image_key)
    return off


def encoder_fingerprint(encoder: Any, *, checkpoint: str | Path | None = None) -> str:
    """What identifies an encoder's weights: its spec, or a digest of its file or weights.

    Names (``"handcrafted"``, ``"squidpy:..."``, architectures) stand for themselves; a model
    file or checkpoint adds the SHA-256 of its bytes and a network object that of its class,
    configuration and weights (:func:`network_digest`), so that features made by other weights
    or options under the same name are told apart. An
    ``"hf:<folder>"`` is identified by its content, not its path
    (``"hf_<name>:folder:<digest>"``, :func:`hf_folder_fingerprint`): new weights saved into the
    same folder make another fingerprint, and the folder may move.
    """
    if isinstance(encoder, list | tuple):
        return "+".join(encoder_fingerprint(one) for one in encoder) + (
            "" if checkpoint is None else f"@{_file_digest(Path(checkpoint))}")
    if isinstance(encoder, torch.nn.Module):
        return f"{type(encoder).__name__.lower()}:weights:{_weights_digest(encoder)}"
    if isinstance(encoder, Path) or (isinstance(encoder, str) and encoder.endswith(".pt")):
        path = Path(encoder)
        return f"{path.stem}:file:{_file_digest(path)}" if path.is_file() else str(encoder)
    spec = str(encoder)
    folder = hf_folder(spec)
    if folder is not None and checkpoint is None:
        return f"hf_{folder.name}:folder:{hf_folder_fingerprint(folder)}"
    return spec if checkpoint is None else f"{spec}@{_file_digest(Path(checkpoint))}"


def hf_folder(encoder: Any) -> Path | None:
    """The local transformers folder an ``"hf:<folder>"`` encoder names (``None``: no such)."""
    if not (isinstance(encoder, str) and encoder.startswith("hf:")):
        return None
    folder = Path(encoder.removeprefix("hf:"))
    return folder if (folder / "config.json").is_file() else None


#: the files of a transformers folder that make its features: the model's configuration, the
#: image processor's (normalisation, input size), the weights and the index of sharded weights
_HF_FILES = ("config.json", "preprocessor_config.json", "*.safetensors", "*.bin", "*.index.json")


def hf_folder_fingerprint(folder: str | Path) -> str:
    """A digest (16 hex digits) of what a transformers folder holds, not of where it lies.

    Each of its files that make the features (``config.json``, ``preprocessor_config.json``,
    every ``*.safetensors`` and ``*.bin`` weights file and the ``*.index.json`` of sharded
    weights) is fingerprinted by :func:`histoexpr._core.memory.file_fingerprint` (whole up to
    64 MiB, sampled beyond: a GiB of weights costs ~24 MiB read), and their names, sizes and
    digests are combined, in the order of their names, into one digest.
    """
    import hashlib

    from ..._core.memory import file_fingerprint

    folder = Path(folder)
    files = sorted({path for pattern in _HF_FILES for path in folder.glob(pattern)
                    if path.is_file()}, key=lambda path: path.name)
    digest = hashlib.blake2b(digest_size=8)
    for path in files:
        facts = file_fingerprint(path)
        digest.update(f"{path.name}\0{facts['bytes']}\0{facts['blake2b']}\0".encode())
    return digest.hexdigest()


def _weights_digest(network: torch.nn.Module) -> str:
    """:func:`network_digest`, its first 16 hex digits."""
    return network_digest(network)[:16]


def network_digest(network: torch.nn.Module) -> str:
    """The SHA-256 of what makes a network's outputs: its class, configuration and weights.

    The class by name (not by module: ``__main__`` in a notebook, a package's in a script, the
    same network either way), the configuration a :class:`histoexpr.models.Network` is built
    with (``get_config()``: options such as a pooling that no weight shows) and every tensor of
    its ``state_dict`` in the order of their names.
    """
    import hashlib
    import json

    digest = hashlib.sha256()
    kind = type(network)
    digest.update(kind.__qualname__.encode())  # not its module: __main__ in a notebook
    config = network.get_config() if callable(getattr(network, "get_config", None)) else {}
    digest.update(json.dumps(config, sort_keys=True, default=repr).encode())
    for key, value in sorted(network.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _has_random_weights(encoder: Any) -> bool:
    """Whether an ``encoder`` argument without ``checkpoint`` is a network at random init."""
    from ...models import TileEncoder

    return isinstance(encoder, str) and (encoder in TileEncoder.ARCHITECTURES
                                         or encoder.startswith("timm:"))


def _file_digest(path: Path) -> str:
    import hashlib

    if not path.is_file():
        return f"missing:{path}"
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _resolve(encoder: str | Path | Network, *, n_channels: int,
             checkpoint: str | Path | None) -> tuple[str, Callable, torch.nn.Module | None]:
    """One encoder's name, its features' function (features, names if any) and network.

    The network is ``None`` for squidpy features.
    """
    if isinstance(encoder, str) and encoder.split(":")[0] == "squidpy":
        groups = parse_squidpy_encoder(encoder)
        return "squidpy", lambda dataset, **_: squidpy_features(dataset, groups), None
    network, name, normalisation = resolve_encoder(encoder, in_channels=n_channels,
                                                   checkpoint=checkpoint)

    def compute(dataset, *, batch_size: int | None, device: str | None):
        _warn_on_other_scale(network, name, dataset.mpp)
        return encode(network, dataset, batch_size=batch_size, device=resolve_device(device),
                      normalisation=normalisation, desc=f"embed ({name})"), None

    return name, compute, network


def _warn_on_other_scale(network: torch.nn.Module, name: str, tile_mpp: float) -> None:
    """Warn when tiles are at another um/px than the one the encoder was trained at.

    The tile size may differ (learned encoders pool over the whole tile, so an encoder trained
    on small tiles describes a larger tile by the mean of its local features); the pixel size
    sets the scale of the structures the features describe.
    """
    trained_mpp = _trained_mpp(network)
    if trained_mpp is not None and not np.isclose(trained_mpp, tile_mpp, rtol=0.05):
        logger.warning(f"Encoder {name!r} was trained on tiles at {trained_mpp:g} um/px but these "
                       f"tiles are at {tile_mpp:g} um/px, so its features describe structures at "
                       f"another scale; tile at mpp={trained_mpp:g} to match (any tile size).")


def _trained_mpp(network: torch.nn.Module | None) -> float | None:
    """The um/px an encoder was trained at (its ``metadata["mpp"]``), if it records one."""
    return (getattr(network, "metadata", None) or {}).get("mpp")


def encode(network: torch.nn.Module, dataset: Any, *, batch_size: int | None, device: str,
           normalisation: dict[str, Any] | None, desc: str = "embed") -> np.ndarray:
    """Features of every item of a tile dataset, in order, as a float32 array.

    Runs in ``hx.settings.precision`` (bf16 autocast on a GPU by default, fp32 on a CPU), with
    pinned batches and loader workers (``hx.settings.n_workers``) on a GPU, on a copy of the
    network with batch normalisation folded into its convolutions and CNNs in channels-last
    layout (:func:`histoexpr._core.devices.inference_network`; equal to float32 rounding).
    ``batch_size=None`` chooses it (``histoexpr._core.devices.auto_batch_size``).

    The memory of the features (the batches' and their concatenation, ``n_tiles x dim x 8``
    bytes) is estimated before any tile is read where the network states its output size
    (``out_features``), else after the first batch, before the others.
    """
    from torch.utils.data import DataLoader

    from ...models import HandcraftedEncoder

    n_tiles = len(dataset)
    stated = _stated_dim(network)
    if stated is not None:
        _check_feature_memory(n_tiles, stated, desc)
    network, channels_last = inference_network(network, device)
    # hand-crafted statistics stay in fp32: mixed precision is for learned networks
    precision = None if isinstance(network, HandcraftedEncoder) else resolve_precision(device)
    if batch_size is None:
        batch_size = auto_batch_size(network, _tile_shape(dataset), device, precision)
        if torch.device(device).type == "cuda":
            logger.info("%s: %d tiles per batch, chosen from the free memory of %s", desc,
                        batch_size, device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        **loader_options(device))
    mean, std = _normalisation_tensors(normalisation, device)
    chunks = []
    with torch.inference_mode(), autocast(precision), reused_host_memory(device):
        for batch in progress(loader, desc=desc, total=len(loader)):
            images = batch["image"].to(device, non_blocking=True)
            if mean is not None:
                images = (images - mean) / std
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            chunks.append(network(images).float().cpu().numpy())
            if len(chunks) == 1 and stated is None:  # the output size is known now
                _check_feature_memory(n_tiles, int(np.prod(chunks[0].shape[1:])), desc)
    if channels_last:  # the caller's network when it was not copied; harmless on a copy
        network.to(memory_format=torch.contiguous_format)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def _stated_dim(network: torch.nn.Module) -> int | None:
    """The number of features a network says it gives per tile (``out_features``), if it does."""
    dim = getattr(network, "out_features", None)
    return int(dim) if isinstance(dim, int | np.integer) and not isinstance(dim, bool) else None


def _check_feature_memory(n_tiles: int, dim: int, desc: str) -> None:
    """Refuse features of ``n_tiles`` x ``dim`` that would exceed the memory limit."""
    from ..._core.memory import check_memory

    check_memory(
        float(n_tiles) * dim * _FEATURE_BYTES,
        f"{desc}: the features of {n_tiles:,} tiles x {dim:,} dimensions (float32, the batches "
        "and their concatenation)",
        "Make fewer tiles (a larger stride: hx.pp.tile(..., stride_um=...), or a higher "
        "min_tissue), or use an encoder with fewer features.")


def _tile_shape(dataset: Any) -> tuple[int, ...]:
    """The shape of one tile as the encoder receives it (the first item is read)."""
    return tuple(dataset[0]["image"].shape) if len(dataset) else (3, 224, 224)


def resolve_encoder(encoder: str | Path | Network, *, in_channels: int,
                    checkpoint: str | Path | None = None
                    ) -> tuple[torch.nn.Module, str, dict | None]:
    """The network, its short name and its input normalisation for an ``encoder`` argument."""
    from ...io import load_model
    from ...models import HandcraftedEncoder, Network, TileEncoder

    if isinstance(encoder, Network):
        network, name = encoder, type(encoder).__name__.lower()
    elif _is_model_file(encoder):
        network, name = load_model(encoder, device="cpu"), Path(encoder).stem
    elif encoder == "handcrafted":
        return HandcraftedEncoder(in_channels=in_channels), "handcrafted", None
    elif encoder in TileEncoder.ARCHITECTURES:
        network, name = TileEncoder(arch=encoder, in_channels=in_channels), encoder
        if checkpoint is not None:
            network = _load_checkpoint(network, Path(checkpoint))
        else:
            _warn_random_weights(encoder)
    elif isinstance(encoder, str) and encoder.startswith("timm:"):
        if checkpoint is None:
            _warn_random_weights(encoder)
        return _timm_encoder(encoder.removeprefix("timm:"), in_channels, checkpoint)
    elif isinstance(encoder, str) and encoder.startswith("hf:"):
        from ...models import HuggingFaceEncoder

        if checkpoint is not None:
            raise ValueError(f"encoder={encoder!r} loads its weights from its folder; drop "
                             "checkpoint= (or put the weights in the folder).")
        folder = encoder.removeprefix("hf:")
        network, name = HuggingFaceEncoder(path=folder), f"hf_{Path(folder).name}"
    else:
        raise _unknown_encoder(encoder)
    expected = getattr(network, "in_channels", in_channels)
    if expected != in_channels:
        raise ValueError(
            f"The encoder expects {expected}-channel tiles but the image has {in_channels} "
            "channel(s). Use an encoder trained on this kind of image (H&E: 3, nuclei stain: 1)."
        )
    if isinstance(network, HandcraftedEncoder):
        return network, name, None
    metadata = getattr(network, "metadata", {}) or {}
    return network, name, metadata.get("normalisation", DEFAULT_NORMALISATION)


def _warn_random_weights(encoder: str) -> None:
    warnings.warn(f"encoder={encoder!r} without checkpoint= has RANDOM weights: its features "
                  "describe nothing learned. Pass checkpoint= (local weights), a model file "
                  "(.pt) from hx.tl.pretrain, or 'hf:<folder>' of a foundation model.",
                  UserWarning, stacklevel=4)


def _load_checkpoint(network: Network, path: Path) -> Network:
    """Weights for a freshly built encoder: a histoexpr model file or a plain state dict."""
    from ..._core.torch_files import load_weights_only
    from ...io import load_model

    payload = load_weights_only(path, what="checkpoint")
    if isinstance(payload, dict) and payload.get("format") == "histoexpr-model":
        loaded = load_model(path, device="cpu")
        if loaded.get_config() != network.get_config():
            raise ValueError(f"{path} holds a {loaded.get_config()} network, not the requested "
                             f"{network.get_config()}; pass the file itself as encoder=.")
        return loaded
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else payload
    for target in (network, network.body):  # whole encoder, or the bare MONAI/CNN body
        try:
            target.load_state_dict(state)
            return network
        except (RuntimeError, TypeError):
            continue
    raise ValueError(
        f"The weights in {path} do not fit a {network.get_config()} encoder (different layer "
        "names or shapes). Check the architecture (encoder=) and in_channels."
    )


def _timm_encoder(name: str, in_channels: int, checkpoint: str | Path | None):
    """A timm model as a feature extractor; timm is an optional extra."""
    try:
        import timm
    except Exception as error:  # ImportError, or timm's own imports failing (torchvision)
        raise ImportError(
            f"encoder='timm:{name}' needs timm, which could not be imported ({error}). Install "
            "the optional extra: pip install 'histoexpr[timm]' (with a torchvision that matches "
            "your torch)."
        ) from error
    network = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
    if checkpoint is not None:
        from ..._core.torch_files import load_weights_only

        state = load_weights_only(Path(checkpoint), what="checkpoint")
        missing, unexpected = network.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"{checkpoint} lacks {len(missing)} weights of timm model {name!r} "
                             f"(e.g. {missing[:3]}); is it the right checkpoint?")
    config = timm.data.resolve_data_config({}, model=network)
    normalisation = {"mean": list(config["mean"]), "std": list(config["std"])} \
        if in_channels == 3 else DEFAULT_NORMALISATION
    network.in_channels = in_channels
    return network, name.replace("/", "_"), normalisation


def _normalisation_tensors(normalisation: dict[str, Any] | None, device: str):
    if normalisation is None:
        return None, None
    mean = torch.as_tensor(normalisation["mean"], dtype=torch.float32, device=device)
    std = torch.as_tensor(normalisation["std"], dtype=torch.float32, device=device)
    return mean.reshape(-1, 1, 1), std.reshape(-1, 1, 1)


def _encoder_list(encoder, checkpoint) -> list:
    """The encoders asked for, as a list; refuses an empty list, a checkpoint for several."""
    encoders = list(encoder) if isinstance(encoder, list | tuple) else [encoder]
    if not encoders:
        raise ValueError("encoder is an empty list; give at least one encoder.")
    if len(encoders) > 1 and checkpoint is not None:
        raise ValueError("checkpoint applies to a single architecture name, not to a list of "
                         "encoders; give each pretrained encoder as a model file (.pt).")
    return encoders

