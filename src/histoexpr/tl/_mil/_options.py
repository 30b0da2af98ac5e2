"""The options of the slide-level models (``"abmil"`` and the two mean-pool baselines)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

from .._options import ModelOptions, TrainingOptions, _documented

Task = Literal["regression", "classification"]
Labels = Literal["obs", "median"]
TargetTransform = Literal["log1p_normalised", "log1p", "none"]
#: the values of ``task``, ``labels`` and ``target_transform``, from their one ``Literal``
TASKS: tuple[str, ...] = get_args(Task)
LABELS: tuple[str, ...] = get_args(Labels)
TARGET_TRANSFORMS: tuple[str, ...] = get_args(TargetTransform)


@_documented
@dataclass(frozen=True, kw_only=True)
class ABMILOptions(TrainingOptions):
    """Options of model ``"abmil"``: a gated attention MIL network on bags of tile features.

    Parameters
    ----------
    genes
        Genes to predict: a list, a panel name (:func:`histoexpr.pp.gene_panel`) or ``None`` for
        every gene of the bulk table. For classification with ``target=None``, the labels
        ``deg_<gene>`` of these genes; with ``labels="median"`` also a mapping from a label
        name to marker genes (``{"tumour": ["ERBB2", "KRT19", ...]}``) whose mean standardised
        expression is split.
    target
        Classification: the column(s) of the bulk table's ``obs`` to learn.
    task
        ``"regression"`` or ``"classification"``.
    labels
        Classification: ``"obs"`` learns label columns of the bulk table (``target``, or the
        ``deg_<gene>`` columns of :func:`histoexpr.pp.deg_labels`); ``"median"`` makes
        ``"down"`` / ``"up"`` labels ``deg_<gene>`` (or the mapping's names) from the bags"
        expression, split at the training bags' median.
    tiles_key
        Key of the tiles (their table holds the features).
    features_key
        Key of the tile features in the tile table's ``obsm``; ``None`` takes the only one there.
    bags_key
        Key of the pseudo-bulk bags (ignored for a Cohort).
    target_transform
        ``"log1p_normalised"`` (raw counts scaled to 10,000 per bag over all genes, then
        ``log1p``), ``"log1p"`` (values already normalised, e.g. TPM) or ``"none"``.
    per_gene
        One independent network per gene (or per label column) instead of one for the panel.
    hidden
        Width of the tile MLP.
    attention_hidden
        Width of the attention branch.
    dropout
        Dropout after the tile MLP.
    attention_entropy
        Weight of an attention-entropy penalty added to the training loss (0 turns it off):
        ``attention_entropy * (1 - H(a) / log n)``, averaged over the training bags and the
        attention branches, where ``H(a)`` is the entropy of a bag's attention over its ``n``
        tiles (0 for even attention, 1 for all of it on one tile). It keeps the attention from
        collapsing onto a few tiles unless that lowers the task loss by more than the penalty,
        so the contribution map (attention times tile output) keeps the ranking of the tiles'
        own outputs where the bags carry no evidence for a sharper attention (e.g. pseudo-bulk
        bags, whose expression is the mean of their spots). Early stopping scores the task
        loss alone.
    max_tiles
        Training bags with more tiles are subsampled to this many, anew each epoch; ``None``
        keeps every tile.
    batch_size
        Bags per step (padded to the largest, padding masked out of the attention).
    epochs
        Maximum number of epochs.
    val_fraction
        Share of the bags held out for early stopping (0 trains ``epochs`` without it).
    """

    model: ClassVar[str] = "abmil"

    genes: Any = None
    target: str | list[str] | None = None
    task: Task = "regression"
    labels: Labels = "obs"
    tiles_key: str = "he_tiles"
    features_key: str | None = None
    bags_key: str = "bags"
    target_transform: TargetTransform = "log1p_normalised"
    per_gene: bool = False
    hidden: int = 128
    attention_hidden: int = 64
    dropout: float = 0.1
    attention_entropy: float = 10.0
    max_tiles: int | None = 512
    batch_size: int = 4
    epochs: int = 100
    lr: float = 0.001
    weight_decay: float = 0.0001
    patience: int | None = 10
    val_fraction: float = 0.2
    seed: int | None = None
    device: str | None = None


@_documented
@dataclass(frozen=True, kw_only=True)
class MeanPoolRidgeOptions(ModelOptions):
    """Options of model ``"meanpool_ridge"``: ridge regression on the bags' mean tile features.

    Parameters
    ----------
    genes
        Genes to predict: a list, a panel name or ``None`` for all.
    tiles_key
        Key of the tiles.
    features_key
        Key of the tile features; ``None`` takes the only one there.
    bags_key
        Key of the pseudo-bulk bags (ignored for a Cohort).
    target_transform
        As for ``model="abmil"``: ``"log1p_normalised"``, ``"log1p"`` or ``"none"``.
    alphas
        Ridge penalties to choose from.
    """

    model: ClassVar[str] = "meanpool_ridge"

    genes: Any = None
    tiles_key: str = "he_tiles"
    features_key: str | None = None
    bags_key: str = "bags"
    target_transform: TargetTransform = "log1p_normalised"
    alphas: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1000.0)


@_documented
@dataclass(frozen=True, kw_only=True)
class MeanPoolLogisticOptions(ModelOptions):
    """Options of model ``"meanpool_logistic"``: logistic regression on mean tile features.

    Parameters
    ----------
    genes
        As for ``model="abmil"``: genes whose ``deg_<gene>`` labels to learn, or with
        ``labels="median"`` genes (or named marker sets) to label at the training median.
    target
        Label column(s) of the bulk table's ``obs``.
    task
        Must be ``"classification"`` (the regression baseline is ``"meanpool_ridge"``).
    labels
        ``"obs"`` or ``"median"``, as for ``model="abmil"``.
    tiles_key
        Key of the tiles.
    features_key
        Key of the tile features; ``None`` takes the only one there.
    bags_key
        Key of the pseudo-bulk bags (ignored for a Cohort).
    target_transform
        Expression transform of ``labels="median"``.
    Cs
        Inverse penalties to choose from.
    seed
        Random seed of the inner folds; ``None`` uses ``hx.settings.seed``.
    """

    model: ClassVar[str] = "meanpool_logistic"

    def _check(self) -> None:
        super()._check()
        if self.task != "classification":
            raise ValueError(f"meanpool_logistic classifies (task='classification'), got task="
                             f"{self.task!r}; the regression baseline is model='meanpool_ridge'.")

    genes: Any = None
    target: str | list[str] | None = None
    task: Task = "classification"
    labels: Labels = "obs"
    tiles_key: str = "he_tiles"
    features_key: str | None = None
    bags_key: str = "bags"
    target_transform: TargetTransform = "log1p_normalised"
    Cs: Sequence[float] = (0.001, 0.01, 0.1, 1.0, 10.0)
    seed: int | None = None
