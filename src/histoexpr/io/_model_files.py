"""Model files: a network's weights with everything needed to apply it correctly.

A file is a plain dictionary saved with :func:`torch.save` and read with
``torch.load(..., weights_only=True)``: tensors, numbers, strings, lists and dicts only, so
loading a file never runs code from it. The network is rebuilt from histoexpr's own classes
(:mod:`histoexpr.models`) by name, with the constructor arguments stored in the file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core.files import check_replaceable, content_digest, payload_found, seal_of, written_beside
from .._core.logs import logger
from .._core.records import migrate_model_metadata
from .._core.seeds import resolve_device
from .._core.validate import check_bool

if TYPE_CHECKING:
    from ..models import Network

FILE_FORMAT = "histoexpr-model"
FORMAT_VERSION = 1
#: the oldest format this version still reads
OLDEST_READABLE_FORMAT = 1
_PLAIN_TYPES = (str, int, float, bool, type(None))


def save_model(model: Network, path: str | Path, *, overwrite: bool = False) -> Path:
    """Save a histoexpr network with its configuration and metadata.

    Parameters
    ----------
    model
        A network from :mod:`histoexpr.models`; its ``metadata`` (genes, classes, um/px,
        normalisation, history...) is saved with it and must hold plain values only.
    path
        File to write, conventionally ending in ``.pt``.
    overwrite
        Replace an existing model file written by :func:`save_model` at ``path`` and unchanged
        since (each file records the digest of its contents and path); any other file, or a
        model file edited, copied or moved there since, is never replaced: an error says so.
        The new file is written beside it and renamed into place when complete, so a failed or
        interrupted write (a full disk, a kill) leaves the old file intact.

    Returns
    -------
    The path written. In a distributed run (``torchrun``), only rank 0 writes; the other
    processes return the same path without writing.
    """
    check_bool("overwrite", overwrite)
    import torch

    from .. import __version__
    from .._core.distributed import is_main_process
    from ..models import Network, network_class

    path = Path(path)
    if not isinstance(model, Network):
        raise TypeError(
            f"save_model saves histoexpr networks (histoexpr.models), got {type(model).__name__}. "
            "For another torch module, save its state_dict with torch.save."
        )
    kind = type(model)
    if network_class(kind.__name__) is not kind:  # load_model would not rebuild it as itself
        other = network_class(kind.__name__)
        clash = (f", and a file naming {kind.__name__!r} is rebuilt as {other.__module__}."
                 f"{other.__qualname__}" if other is not None else "")
        raise TypeError(
            f"save_model saves networks that load_model can rebuild: histoexpr's own classes and "
            f"those registered with hx.models.register_network. {kind.__module__}."
            f"{kind.__qualname__} is neither{clash}. "
            + ("Give your class another name, then register it" if other is not None else
               "Register it") + " (hx.models.register_network(YourClass)) before saving, and "
            "again in the Python process that loads the file. Nothing was written.")
    check_replaceable(path, overwrite=overwrite, written_by="hx.io.save_model",
                      ours=lambda p: payload_found(p, FILE_FORMAT))
    _check_plain(model.get_config(), "the network's configuration")
    _check_plain(model.metadata, "model.metadata")
    if not is_main_process():
        return path
    payload = {
        "format": FILE_FORMAT,
        "format_version": FORMAT_VERSION,
        "histoexpr_version": __version__,
        "class": type(model).__name__,
        "config": model.get_config(),
        "metadata": model.metadata,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    payload["seal"] = seal_of(content_digest(payload), path)
    with written_beside(path) as temporary:
        torch.save(payload, temporary)
    logger.info("Saved %s to %s", type(model).__name__, path)
    return path


def load_model(path: str | Path, *, device: str | None = None,
               root: str | Path | None = None) -> Network:
    """Load a network saved by :func:`save_model`, safely.

    Loading never runs code: the file is read with ``weights_only=True``, the network is one
    of histoexpr's own classes, and a transformers folder it names is read with
    ``trust_remote_code=False`` and ``local_files_only=True``.

    Paths written inside a model file (the folder of a
    :class:`~histoexpr.models.HuggingFaceEncoder`, a spot regressor's encoder ``"hf:<folder>"``
    or encoder model file) are resolved only where you say: an absolute path is used as
    written; a relative one is resolved against ``root``, never against the current folder,
    and without ``root`` it is an error that names the path.

    Parameters
    ----------
    path
        The model file.
    device
        Where to put the network; ``None`` uses ``hx.settings.device``.
    root
        The folder that relative paths inside the model file are relative to (e.g. the one
        the model was trained in). ``None``: relative paths are refused.

    Returns
    -------
    The network in evaluation mode, with its ``metadata`` restored. Metadata written by an
    earlier version is read in today's names: the tile side, once ``patch_um``, ``tile_um``
    or ``patch_size_um``, is ``size_um``.
    """
    from .. import models
    from .._core.torch_files import load_weights_only

    path = Path(path)
    payload = load_weights_only(path, what="model file")
    if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
        raise ValueError(
            f"{path} is not a histoexpr model file (no '{FILE_FORMAT}' header). "
            "Files written with torch.save(model) or by other tools cannot be loaded here."
        )
    version = payload.get("format_version")
    written_by = payload.get("histoexpr_version", "an unknown version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} was written by histoexpr {written_by} in model-file format {version}, newer "
            f"than this histoexpr reads (format {FORMAT_VERSION}). Upgrade histoexpr."
        )
    if version < OLDEST_READABLE_FORMAT:
        raise ValueError(
            f"{path} was written by histoexpr {written_by} in model-file format {version}, which "
            f"this version no longer reads (oldest: {OLDEST_READABLE_FORMAT}). Load it with "
            f"histoexpr {written_by} and retrain, or install that version to use it."
        )
    name = payload["class"]
    cls = models.network_class(name)
    if cls is None:
        raise ValueError(
            f"{path} holds a {name!r} network, which this histoexpr does not have (known: "
            f"{', '.join(models._registry.network_classes())}). It may come from a newer or "
            "older version, or be a class of your own: register it first "
            f"(hx.models.register_network({name})), from your own code.")
    config, metadata = _resolve_recorded_paths(path, name, payload["config"],
                                               payload["metadata"], root=root)
    _check_config_size(cls, config, payload.get("state_dict"), path)
    network = _build(cls, config)
    network.load_state_dict(payload["state_dict"])
    network.metadata = migrate_model_metadata(metadata)
    return network.to(resolve_device(device)).eval()


def _resolve_recorded_paths(path: Path, name: str, config: Any, metadata: Any, *,
                            root: str | Path | None) -> tuple[Any, Any]:
    """The file's configuration and metadata with the paths they name resolved (see load_model).

    The paths: a HuggingFaceEncoder's ``config["path"]``; ``metadata["encoder"]`` when it is
    ``"hf:<folder>"`` or a model file (``.pt``).
    """

    def resolve(recorded: str, what: str) -> str:
        if Path(recorded).is_absolute():
            return recorded
        if root is None:
            raise ValueError(
                f"{path} names the {what} {recorded!r} by a relative path, and histoexpr "
                "resolves paths written inside a model file only where you say (never against "
                "the current folder). Pass root= (the folder it is relative to), e.g. "
                f"hx.io.load_model({str(path)!r}, root='.'), or save the model with an "
                "absolute path.")
        return str(Path(root).expanduser().absolute() / recorded)

    if name == "HuggingFaceEncoder" and isinstance(config, dict) \
            and isinstance(config.get("path"), str):
        config = {**config, "path": resolve(config["path"], "transformers folder")}
    encoder = metadata.get("encoder") if isinstance(metadata, dict) else None
    if isinstance(encoder, str) and (encoder.startswith("hf:") or encoder.endswith(".pt")):
        hf = encoder.startswith("hf:")
        spec = encoder.removeprefix("hf:")
        resolved = resolve(spec, "transformers folder" if hf else "encoder model file")
        if resolved != spec:
            new = f"hf:{resolved}" if hf else resolved
            metadata = {**metadata, "encoder": new}
            features = metadata.get("features")
            if isinstance(features, dict) and features.get("fingerprint") == encoder:
                metadata["features"] = {**features, "fingerprint": new}
    return config, metadata


def _check_plain(value: Any, what: str) -> None:
    """Refuse values that a weights-only load could not read back."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{what} has a non-string key {key!r}; use strings as keys.")
            _check_plain(item, what)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(item, what)
    elif type(value) not in _PLAIN_TYPES:  # exact types: numpy scalars would not load back
        import torch

        if isinstance(value, torch.Tensor):
            return
        raise TypeError(
            f"{what} holds a {type(value).__name__} ({value!r:.60}), which a safe model file "
            "cannot store. Convert it to plain values (e.g. array.tolist(), str(path))."
        )


def _build(cls: type, config: dict) -> Network:
    """The network ``cls`` built from its configuration (the bare base class takes it whole)."""
    from ..models import Network

    return cls(config=config) if cls is Network else cls(**config)


def _check_config_size(cls: type, config: Any, state_dict: Any, path: Path) -> None:
    """Refuse a file whose configuration asks for other weights than it holds, before building.

    The network is first built on torch's ``"meta"`` device (shapes only, no memory), so a
    configuration that asks for 10^11 weights is refused by its count, not by allocating them.
    A network that cannot be built there (one that reads files as it is built) is checked by
    :meth:`torch.nn.Module.load_state_dict` after it is built.
    """
    import torch

    from .._core.memory import check_memory, format_bytes

    if not isinstance(config, dict) or not isinstance(state_dict, dict):
        raise ValueError(f"{path} is damaged: its configuration or its weights are missing.")
    stored = {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    try:
        with torch.device("meta"):
            skeleton = _build(cls, config)
        wanted = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()
                  if isinstance(v, torch.Tensor)}
    except TypeError as error:
        raise ValueError(f"{path} holds a configuration {cls.__name__} does not take ({error}); "
                         "the file is damaged or from another version.") from error
    except Exception:  # noqa: BLE001 - built for real below, then checked by load_state_dict
        return
    n_wanted = sum(math.prod(shape) for shape in wanted.values())
    n_stored = sum(math.prod(shape) for shape in stored.values())
    if wanted != stored:
        differ = sorted(k for k in set(wanted) | set(stored) if wanted.get(k) != stored.get(k))
        raise ValueError(
            f"{path} is damaged or altered: its configuration asks for {n_wanted:,} weights "
            f"({format_bytes(4 * n_wanted)} as float32) but it holds {n_stored:,}, in other "
            f"shapes (e.g. {differ[0]!r}: configured {wanted.get(differ[0])}, stored "
            f"{stored.get(differ[0])}). Not built; save the model again with hx.io.save_model.")
    check_memory(4 * n_wanted, f"Loading the {cls.__name__} of {path}",
                 "Load it on a machine with more memory (or raise hx.settings.max_memory).")
