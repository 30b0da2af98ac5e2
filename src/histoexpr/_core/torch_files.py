"""Reading torch files safely, with errors that name the file and what to do (shared by rooms).

Every torch file histoexpr reads (model files, checkpoints) goes through
:func:`load_weights_only`: ``torch.load(..., weights_only=True)``, so reading never runs code
from the file. Torch's own errors are replaced by messages naming the file; its advice to turn
off weights-only loading is never passed on (the original error is not chained).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_weights_only(path: str | Path, *, what: str = "model file") -> Any:
    """The contents of a torch file holding tensors and plain values only.

    Parameters
    ----------
    path
        The file.
    what
        What the file is meant to be, for the messages (``"model file"``, ``"checkpoint"``).

    Returns
    -------
    What the file holds (a dict of tensors and plain values, as a rule).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No {what} at {path}.")
    damaged = (f"{path} is not a readable torch file (it is empty, damaged, or a file of another "
               f"kind such as text); give the {what} written by torch.save or hx.io.save_model.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        with path.open("rb") as handle:
            head = handle.read(4)
        # a torch archive (zip) or a pickle stream that the weights-only reader refused
        is_pickle = head.startswith((b"PK\x03\x04", b"\x80"))
        if is_pickle or "Unsupported global" in str(error):
            raise ValueError(
                f"{path} is not a plain weights file: it holds Python objects other than tensors "
                "and plain values, and is refused for safety: histoexpr reads torch files with "
                "weights_only=True only, so that loading never runs code from a file. Use a "
                f"{what} that holds weights only (a state dict saved with "
                "torch.save, or a file written by hx.io.save_model)."
            ) from None
        raise ValueError(damaged) from None
    except (KeyError, EOFError, RuntimeError, ValueError, OSError, UnicodeDecodeError,
            AttributeError, IndexError, TypeError):
        # what torch raises on text, empty or truncated files (e.g. ``KeyError: 101``)
        raise ValueError(damaged) from None


def holds_format(path: str | Path, file_format: str) -> bool:
    """Whether ``path`` is a torch file written by histoexpr in ``file_format``.

    Read with ``weights_only=True`` like every torch file; a file that cannot be read that way,
    or that holds anything but a dictionary with ``"format": file_format``, is not.
    """
    try:
        payload = load_weights_only(path)
    except (ValueError, FileNotFoundError, OSError):
        return False
    return isinstance(payload, dict) and payload.get("format") == file_format


def untrained_message(network: Any, where: str) -> str:
    """Why ``network`` (no ``metadata["model"]``) cannot predict, and what to give instead.

    ``where``: what held it (``"This network"``, ``"model.pt"``).
    """
    kind = type(network).__name__
    said = (f"{where} holds a {kind} without metadata['model']: a network, not a model trained "
            "by hx.tl.fit, so it predicts nothing.")
    if kind.endswith("Encoder"):
        said += (" A tile encoder (from hx.tl.pretrain or hx.models) makes features: give it "
                 "as encoder= to hx.tl.embed, hx.tl.embed_cohort or hx.tl.fit.")
    return said + " Predict with a model trained by hx.tl.fit (saved with hx.io.save_model)."


def model_fingerprint(model: Any) -> str:
    """A digest (SHA-256) of a trained model's weights and metadata: no other model's.

    What results written by a model into slide stores record of it (the spot regressor's
    tables, a slide-level model's per-tile results), so that a rerun with the same model
    finishes an interrupted run and results of another model are told apart.
    """
    import hashlib
    import json

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps(getattr(model, "metadata", None) or {}, sort_keys=True,
                             default=str).encode())
    return digest.hexdigest()
