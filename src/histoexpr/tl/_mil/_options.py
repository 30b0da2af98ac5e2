"""The options of the slide-level models (``"abmil"`` and the two mean-pool baselines).

The bag inputs they share are declared and documented once, in :class:`_BagInputs` (genes,
keys, expression transform) and :class:`_LabelledBagInputs` (the classification targets of
``"abmil"`` and ``"meanpool_logistic"``); each model's class adds only its own options.
"""

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
class _BagInputs(ModelOptions):
    """The inputs every slide-level model reads: the genes, the keys of the bags, the transform.

    Parameters
    ----------
    genes
        Genes to predict: a list, a panel name (:func:`histoexpr.pp.gene_panel`) or ``None`` for
        every gene of the bulk table.
    tiles_key
        Key of the tiles (their table holds the features).
    features_key
        Key of the tile features in the tile table's ``obsm``; ``None`` takes the only one there.
    bags_key
        Key of the pseudo-bulk bags (ignored for a Cohort).
    target_transform
        Transform of the bags' expression: ``"log1p_normalised"`` (raw counts scaled to 10,000
        per bag over all genes, then ``log1p``), ``"log1p"`` (values already normalised, e.g.
        TPM) or ``"none"``.
    """

    genes: Any = None
    tiles_key: str = "he_tiles"
    features_key: str | None = None
    bags_key: str = "bags"
    target_transform: TargetTransform = "log1p_normalised"


@_documented
@dataclass(frozen=True, kw_only=True)
class _LabelledBagInputs(_BagInputs):
    """The bag inputs of the models that also classify: the labels and where they come from.

    Parameters
    ----------
    target
        Classification: the label column(s) of the bulk table's ``obs`` to learn; ``None``
        learns the labels ``deg_<gene>`` of ``genes``.
    task
        ``"regression"`` or ``"classification"``.
    labels
        Classification: ``"obs"`` learns label columns of the bulk table (``target``, or the
        ``deg_<gene>`` columns of :func:`histoexpr.pp.deg_labels`); ``"median"`` makes
        ``"down"`` / ``"up"`` labels from the bags' expression (after ``target_transform``),
        split at the training bags' median: ``deg_<gene>`` of each gene, or, with ``genes`` a
        mapping from a label name to marker genes (``{"tumour": ["ERBB2", "KRT19", ...]}``),
        one label of each name, splitting its genes' mean standardised expression.
    """

    target: str | list[str] | None = None
    task: Task = "regression"
    labels: Labels = "obs"


@_documented
@dataclass(frozen=True, kw_only=True)
class ABMILOptions(_LabelledBagInputs, TrainingOptions):
    """Options of model ``"abmil"``: a gated attention MIL network on bags of tile features.

    Parameters
    ----------
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

    per_gene: bool = False
    hidden: int = 128
    attention_hidden: int = 64
    dropout: float = 0.1
    attention_entropy: float = 10.0
    max_tiles: int | None = 512
    batch_size: int = 4
    epochs: int = 100
    weight_decay: float = 0.0001
    patience: int | None = 10


@_documented
@dataclass(frozen=True, kw_only=True)
class MeanPoolRidgeOptions(_BagInputs):
    """Options of model ``"meanpool_ridge"``: ridge regression on the bags' mean tile features.

    Parameters
    ----------
    alphas
        Ridge penalties to choose from.
    """

    model: ClassVar[str] = "meanpool_ridge"

    alphas: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1000.0)


@_documented
@dataclass(frozen=True, kw_only=True)
class MeanPoolLogisticOptions(_LabelledBagInputs):
    """Options of model ``"meanpool_logistic"``: logistic regression on mean tile features.

    Parameters
    ----------
    task
        Must be ``"classification"`` (the regression baseline is ``"meanpool_ridge"``).
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

    task: Task = "classification"
    Cs: Sequence[float] = (0.001, 0.01, 0.1, 1.0, 10.0)
    seed: int | None = None
