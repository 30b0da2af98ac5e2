"""Training curves: the loss of every epoch on the training and validation data."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._docs import check_save, save_figure, shared_docs

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ..models import Network


@shared_docs
def history(
    model_or_history: Network | Mapping[str, Any],
    *,
    log_scale: bool = False,
    title: str | None = None,
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Axes:
    """Draw the training and validation loss per epoch, with the best epoch marked.

    Parameters
    ----------
    model_or_history
        A network trained by :func:`histoexpr.tl.fit` (its ``metadata["history"]``), the
        history dict returned by the training loop (``train_loss``, ``val_loss``,
        ``best_epoch``), or a dict of such histories (one per ensemble member, e.g. per patch
        size), drawn in one colour each.
    log_scale
        Draw the loss on a logarithmic axis.
    title
        Title of the axes; defaults to the model's name and the best epoch.

    Returns
    -------
    The axes drawn into.

    Examples
    --------
    A training record (``model.metadata["history"]`` of a model trained by gradient descent;
    here written by hand) that stopped early, the best epoch marked:

    .. plot::

        >>> import histoexpr as hx
        >>> record = {"train_loss": [1.0, 0.7, 0.5, 0.4, 0.35, 0.3],
        ...           "val_loss": [1.1, 0.8, 0.65, 0.6, 0.62, 0.66],
        ...           "best_epoch": 3, "epochs_run": 6}
        >>> ax = hx.pl.history(record)

    """
    check_save(save)
    import matplotlib.pyplot as plt

    records = _histories_of(model_or_history)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    best_epochs = [_draw_curves(ax, record, member, f"C{i}")
                   for i, (member, record) in enumerate(records.items())]
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if log_scale:
        ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(frameon=False, fontsize="small")
    if title is None:
        name = (getattr(model_or_history, "metadata", None) or {}).get("model", "training")
        title = f"{name}: best epoch {best_epochs[0]}" if len(records) == 1 else name
    ax.set_title(title)
    save_figure(ax.figure, save)
    return ax


def _draw_curves(ax: Axes, record: Mapping[str, Any], member: str, colour: str) -> int:
    """One training run: train loss dashed, validation loss solid, the best epoch starred."""
    prefix = f"{member} " if member else ""
    train_loss = np.asarray(record["train_loss"], dtype=float)
    val_loss = np.asarray(record.get("val_loss") or [], dtype=float)
    epochs = np.arange(1, len(train_loss) + 1)
    best = int(record.get("best_epoch", len(train_loss) - 1)) + 1
    ax.plot(epochs, train_loss, color=colour, linestyle="--", marker="o", markersize=3,
            label=f"{prefix}train")
    if len(val_loss):
        ax.plot(epochs[: len(val_loss)], val_loss, color=colour, marker="o", markersize=3,
                label=f"{prefix}validation")
        ax.plot([best], [val_loss[best - 1]], marker="*", markersize=12, color=colour,
                markeredgecolor="black", linestyle="none", label=f"{prefix}best: epoch {best}")
    else:
        ax.axvline(best, color=colour, linestyle=":", linewidth=1)
    return best


def _histories_of(model_or_history: Any) -> dict[str, Mapping[str, Any]]:
    """``{member: history}``: one unnamed history, or one per member of an ensemble."""
    if isinstance(model_or_history, Mapping):
        record = model_or_history
    else:
        record = (getattr(model_or_history, "metadata", None) or {}).get("history")
    if isinstance(record, Mapping) and "train_loss" not in record:  # per member (patch sizes)
        members = {str(k): v for k, v in record.items()
                   if isinstance(v, Mapping) and len(v.get("train_loss", []))}
        if members:
            return members
    if not record or not len(record.get("train_loss", [])):
        raise ValueError("No training history: pass a network trained by hx.tl.fit (with "
                         "metadata['history']) or the dict returned by the training loop, with "
                         "'train_loss', 'val_loss' and 'best_epoch'.")
    return {"": record}
