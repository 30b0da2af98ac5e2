"""The options of every model, one class per model, defined once with their documentation.

``hx.tl.fit(data, model="spot_regressor", route="mlp")`` and
``hx.tl.fit(data, model=hx.tl.SpotRegressorOptions(route="mlp"))`` train the same model: the
string form builds the model's options class from its defaults and the keywords given
(:func:`options_for`). The options shared by the models trained by gradient descent
(:class:`TrainingOptions`) and by every model that draws random numbers or runs on a device
(:class:`CommonOptions`) are written once here; their documentation is appended to each
class that has them (:func:`_documented`). This module imports nothing else from ``tl``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import numbers
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .._validate import check_choice, check_fraction, check_int, check_positive

if TYPE_CHECKING:
    from ..models import Network, PatchEnsemble

__all__ = [
    "ABMILOptions",
    "CellMorphologyOptions",
    "CommonOptions",
    "MeanPoolLogisticOptions",
    "MeanPoolRidgeOptions",
    "ModelOptions",
    "OPTIONS",
    "PatchClassifierOptions",
    "SpotRegressorOptions",
    "TrainingOptions",
    "options_for",
]

Task = Literal["regression", "classification"]
Labels = Literal["obs", "median"]
TargetTransform = Literal["log1p_normalised", "log1p", "none"]
Combine = Literal["auto", "ensemble", "best"]
Route = Literal["ridge", "mlp", "cnn", "auto"]

#: documentation of the options several models share (one text per option)
SHARED_DOCS: dict[str, str] = {
    "epochs": "Maximum number of epochs (early stopping on the validation loss).",
    "batch_size": "Samples (patches, spots or bags) per training batch.",
    "lr": "Learning rate of AdamW.",
    "weight_decay": "Weight decay of AdamW.",
    "patience": ("Early stopping: epochs without a better validation loss before stopping; "
                 "``None`` never stops early."),
    "val_fraction": ("Share of the training data held out for early stopping, in ``[0, 1)``; "
                     "0 trains ``epochs`` without a validation split where the model can (a "
                     "model that cannot says so)."),
    "seed": "Random seed; ``None`` uses ``hx.settings.seed``.",
    "device": "Torch device; ``None`` uses ``hx.settings.device``.",
}

#: model name -> {old option name: new name}; the old names still work, with a FutureWarning
RENAMED: dict[str, dict[str, str]] = {
    "patch_classifier": {"patch_size_um": "size_um"},
    "cell_morphology": {"folds": "n_folds"},
    "spot_regressor": {"patch_um": "size_um"},
}


def _documented_names(doc: str) -> set[str]:
    """Option names documented in a numpydoc ``Parameters`` section."""
    section = doc.split("----------\n", 1)[-1]
    return {line.strip() for line in section.splitlines()
            if line.strip() and not line.startswith(" ")}


def _documented(cls: type) -> type:
    """Append the shared documentation of the options ``cls`` has and does not document."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    own = _documented_names(doc) if "Parameters" in doc else set()
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in own]
    undocumented = [name for name in missing if name not in SHARED_DOCS]
    if undocumented:
        raise TypeError(f"{cls.__name__} does not document {undocumented}.")
    if "Parameters" not in doc:
        doc += "\n\nParameters\n----------"
    for name in missing:
        doc += f"\n{name}\n" + textwrap.indent(textwrap.fill(SHARED_DOCS[name], 88), "    ")
    cls.__doc__ = doc
    return cls


def _int_at_least(minimum: int) -> Any:
    return lambda name, value: check_int(name, value, minimum=minimum)


#: option name -> its range check (applied to a value that is not None), one per name
CHECKS: dict[str, Any] = {
    "seed": lambda name, value: check_int(name, value),
    "epochs": _int_at_least(1),
    "batch_size": _int_at_least(1),
    "lr": check_positive,
    "weight_decay": lambda name, value: check_positive(name, value, allow_zero=True),
    "patience": _int_at_least(1),
    "val_fraction": lambda name, value: check_fraction(name, value, closed="left"),
    "n_folds": _int_at_least(2),
    "size_um": lambda name, value: [check_positive(name, v, unit="um") for v in
                                    (value if isinstance(value, Sequence) else [value])],
    "dropout": lambda name, value: check_fraction(name, value, closed="left"),
    "attention_entropy": lambda name, value: check_positive(name, value, allow_zero=True),
    "width": _int_at_least(1),
    "hidden": _int_at_least(1),
    "attention_hidden": _int_at_least(1),
    "n_members": _int_at_least(1),
    "max_tiles": _int_at_least(1),
    "feature_mpp": lambda name, value: check_positive(name, value, unit="um/px"),
    "val_block_um": lambda name, value: check_positive(name, value, unit="um"),
    "pretrain_epochs": _int_at_least(1),
    "n_components": _int_at_least(1),
    "subspot_um": lambda name, value: check_positive(name, value, unit="um"),
    "alphas": lambda name, value: _each_positive(name, value),
    "Cs": lambda name, value: _each_positive(name, value),
}


def _each_positive(name: str, value: Any) -> None:
    """A penalty grid: one positive number, or a non-empty list of them."""
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if not values:
        raise ValueError(f"{name} is empty; give at least one value, e.g. {name}=[1.0].")
    for one in values:
        check_positive(name, one)


def _non_finite(value: Any, path: str) -> str | None:
    """Where ``value`` (a number, or numbers nested in lists and mappings) is NaN or infinite."""
    if isinstance(value, bool) or value is None or isinstance(value, str | Path):
        return None
    if isinstance(value, numbers.Real):
        return None if math.isfinite(float(value)) else f"{path}={value!r}"
    if hasattr(value, "ndim") and hasattr(value, "tolist") and getattr(value, "dtype", None) \
            is not None and value.dtype.kind in "fc":  # a numpy array of numbers
        return _non_finite(value.tolist(), path)
    if isinstance(value, Mapping):
        return next((found for key, item in value.items()
                     if (found := _non_finite(item, f"{path}[{key!r}]"))), None)
    if isinstance(value, Sequence):
        return next((found for i, item in enumerate(value)
                     if (found := _non_finite(item, f"{path}[{i}]"))), None)
    return None


def _choices(cls: type) -> dict[str, Any]:
    """Option name -> its Literal type, for the options whose annotation is one of ours."""
    literals = {"Task": Task, "Labels": Labels, "TargetTransform": TargetTransform,
                "Combine": Combine, "Route": Route}
    return {f.name: literals[f.type] for f in dataclasses.fields(cls)
            if isinstance(f.type, str) and f.type in literals}


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """Base of every model's options: :meth:`record` and the checks of ``__post_init__``."""

    #: the model these options train (``hx.tl.fit(..., model=...)``)
    model: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        """Range checks of the options, one per option name (:data:`CHECKS`).

        First, for every option: a number that is NaN or infinite, alone or inside a list or a
        mapping (``alphas=[nan]``, ``candidates={"lr": [inf]}``), is refused, whatever the option.
        """
        for f in dataclasses.fields(self):
            found = _non_finite(getattr(self, f.name), f.name)
            if found is not None:
                raise ValueError(f"{type(self).__name__}: {found} is not a finite number; "
                                 f"every number of an option must be finite. Pass a finite "
                                 f"value for {f.name} (or leave its default).")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in CHECKS and value is not None:
                CHECKS[f.name](f.name, value)
        for name, choices in _choices(type(self)).items():
            check_choice(name, getattr(self, name), choices)

    def kwargs(self) -> dict[str, Any]:
        """The options by name (the values themselves, not copies)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def record(self) -> dict[str, Any]:
        """The options as JSON-safe values (stored in the model's ``metadata["options"]``)."""
        return {name: _json_safe(value) for name, value in self.kwargs().items()}


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return None if value is None else str(value)
    if isinstance(value, bool | numbers.Integral | numbers.Real) and not hasattr(value, "ndim"):
        return (bool(value) if isinstance(value, bool) else
                int(value) if isinstance(value, numbers.Integral) else float(value))
    if hasattr(value, "tolist") and hasattr(value, "ndim"):  # numpy arrays and scalars
        return _json_safe(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [_json_safe(v) for v in value]
    return f"<{type(value).__name__}>"  # a network given as an option


@dataclass(frozen=True, kw_only=True)
class CommonOptions(ModelOptions):
    """Options of every model that draws random numbers and runs on a torch device."""

    seed: int | None = None
    device: str | None = None


@_documented
@dataclass(frozen=True, kw_only=True)
class TrainingOptions(CommonOptions):
    """Options shared by every model trained by gradient descent (with the one training loop).

    Each model's options class subclasses this one and sets its own defaults.
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    val_fraction: float = 0.2


@_documented
@dataclass(frozen=True, kw_only=True)
class PatchClassifierOptions(TrainingOptions):
    """Options of model ``"patch_classifier"``: CNN patch classifiers of transcript-defined classes.

    Parameters
    ----------
    labels_key
        Key of the label map written by :func:`histoexpr.pp.transcript_labels`.
    image_key
        Image to learn from; defaults to the one the labels were made on. Several images of the
        section on the same coordinates and with the same channels (e.g. focal planes) pool
        their patches: every patch centre is read from each image, for training and for
        validation.
    size_um
        Side of the patches in um; several sizes train one classifier each.
    mpp
        Pixel size at which patches are read, in um/px; defaults to the image's own pixel size
        or 0.5 um/px, whichever is coarser. Patch sides are rounded to an even number of pixels.
        One value per patch size makes a multi-scale model: e.g. ``size_um=(12, 64)``
        with ``mpp=(0.25, 1.0)`` sees a nucleus in detail and the tissue around it coarsely.
    region
        ``(x_min, y_min, x_max, y_max)`` in um: only patches whose largest window lies inside it
        are used (train on one part of a section, test on another).
    val_fraction
        Share of the patches used for validation.
    val_block_um
        ``None`` validates on a stripe along the longer side of the training area (at a random
        end, holding ``val_fraction`` of the patches); a side in um validates on random square
        blocks of that side instead.
    combine
        What to return: ``"ensemble"`` (every size, probabilities averaged), ``"best"`` (the size
        with the best validation mean Dice) or ``"auto"`` (the ensemble if it validates at least
        as well as the best size, else that size).
    width
        Channels of the first convolution block of each classifier.
    dropout
        Dropout before each classifier's last layer.
    augment
        Augment the training patches.
    cache
        Keep each patch in memory after its first read (2 bytes per pixel and channel), so
        that later epochs do not read the image again; ``False`` reads every patch every epoch.
    epochs
        Maximum number of epochs per patch size.
    batch_size
        Patches per batch.
    patience
        Epochs without a better validation loss before stopping; ``None`` never stops early.
    calibrate
        Fit the class-prior correction and temperature on the validation patches (see
        :func:`histoexpr.tl.fit`); ``False`` stores none, so that ``predict`` gives the
        network's own probabilities.
    seed
        Random seed (split, initialisation, batches, augmentation); ``None`` uses
        ``hx.settings.seed``.
    """

    model: ClassVar[str] = "patch_classifier"

    def _check(self) -> None:
        super()._check()
        if self.val_fraction == 0:
            raise ValueError("val_fraction=0: the patch classifier cannot train without a "
                             "validation split (it stops early, chooses the sizes and calibrates "
                             "on it); pass a value in (0, 1), e.g. val_fraction=0.2.")

    labels_key: str = "tx_labels"
    image_key: str | Sequence[str] | None = None
    size_um: float | Sequence[float] = (16.0, 32.0)
    mpp: float | Sequence[float] | None = None
    region: Sequence[float] | None = None
    val_fraction: float = 0.2
    val_block_um: float | None = None
    combine: Combine = "auto"
    width: int = 16
    dropout: float = 0.2
    augment: bool = True
    cache: bool = True
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.002
    weight_decay: float = 0.0001
    patience: int | None = 4
    calibrate: bool = True
    device: str | None = None
    seed: int | None = None


@_documented
@dataclass(frozen=True, kw_only=True)
class CellMorphologyOptions(CommonOptions):
    """Options of model ``"cell_morphology"``: per-cell image features and a logistic regression.

    Parameters
    ----------
    labels_key
        Key of those labels; the cells' classes are read from
        ``sdata.tables[f"{labels_key}_cells"]``.
    cells
        Key of the cell polygons or cell label image; defaults to the one the labels were made
        with.
    image_key
        Image to describe the cells on; defaults to the one the labels were made on.
    region
        ``(x_min, y_min, x_max, y_max)`` in um: train on the cells of this part of the section;
        ``None`` uses the whole image.
    feature_mpp
        Pixel size (um/px) at which the features are measured.
    smooth_um
        Widths (sigma, um) of the Gaussians over neighbouring cells' features.
    stains_key
        Image of other stains (e.g. poly-T, ``sdata.images["stains"]`` of
        ``hx.io.read_merscope``) whose per-cell intensity inside each cell and in a ring around
        it are added to the features; ``None`` (default) uses ``image_key`` alone.
    stains
        Channel names of ``stains_key`` to use (e.g. ``["PolyT"]``); ``None`` uses all.
    ring_um
        Width (um) of the ring around each cell in which the stains are also measured.
    Cs
        Number of values of ``C`` (log-spaced from 1e-4 to 1e4) tried by cross-validation.
    n_folds
        Folds of the cross-validation.
    patch_classifier
        Trained patch classifier(s) (``hx.tl.fit(..., model="patch_classifier")``, on cell
        labels) to stack; ``None`` fits the morphology model alone.
    batch_size
        Patches per forward pass of the patch classifiers.
    device
        Torch device of the patch classifiers; ``None`` uses ``hx.settings.device``.
    seed
        Random seed of the folds; ``None`` uses ``hx.settings.seed``.
    """

    model: ClassVar[str] = "cell_morphology"

    labels_key: str = "tx_labels"
    cells: str | None = None
    image_key: str | None = None
    region: Sequence[float] | None = None
    feature_mpp: float = 0.5
    smooth_um: Sequence[float] = (15.0, 40.0)
    stains_key: str | None = None
    stains: Sequence[str] | None = None
    ring_um: float = 2.0
    Cs: int = 8
    n_folds: int = 5
    patch_classifier: PatchEnsemble | Sequence[PatchEnsemble] | None = None
    batch_size: int = 256
    device: str | None = None
    seed: int | None = None

    def _check(self) -> None:
        super()._check()
        check_positive("ring_um", self.ring_um, unit="um")
        if self.stains is not None and (
                isinstance(self.stains, str) or not isinstance(self.stains, Sequence)
                or not all(isinstance(s, str) for s in self.stains) or not self.stains):
            raise TypeError(f"stains must be a list of channel names of stains_key (e.g. "
                            f"['PolyT']) or None, got {self.stains!r}.")
        if self.stains is not None and self.stains_key is None:
            raise ValueError("stains names channels of stains_key, which is None; pass "
                             "stains_key= the image that holds them (e.g. 'stains').")


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
    attention_entropy: float = 0.0
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


@_documented
@dataclass(frozen=True, kw_only=True)
class SpotRegressorOptions(TrainingOptions):
    """Options of model ``"spot_regressor"``: expression of spots from the H&E around them.

    Parameters
    ----------
    genes
        The genes to predict: a number of genes chosen by :func:`histoexpr.pp.select_genes`
        with ``gene_flavor`` on all training sections, or a list of gene names (a single name
        is one gene).
    gene_flavor
        Ranking used when ``genes`` is a number (``"top_expressed"``, ``"pearson_residuals"``...).
    route
        ``"ridge"``, ``"mlp"``, ``"cnn"`` or ``"auto"`` (see :func:`histoexpr.tl.fit`).
    encoder
        Frozen encoder of the head routes, as :func:`histoexpr.tl.embed` takes it
        (``"handcrafted"``, ``"squidpy"``, an architecture, a model file, or a list of them
        whose features are concatenated). Prediction recomputes the same features on new tiles,
        so the encoder must have fixed weights: architecture names without weights (random)
        are refused. The encoder's fingerprint (a digest of a model file) is recorded.
    features_key
        Key of the embeddings in the tile table's ``obsm``; defaults to ``f"X_{encoder}"``
        (names of a list joined by ``"+"``). Features already there are reused when their
        record (``uns["embeddings"]``, written by :func:`histoexpr.tl.embed`) shows the same
        encoder, image and tiles; features an earlier fit made otherwise are remade, others
        are refused. Features without a record are your own and are used as they are
        (prediction then needs the same kind of features under that key).
    image_key
        Key of the H&E image.
    spots_key
        Key of the spot shapes.
    table_key
        Key of the spot table (raw counts in ``layers["counts"]`` or ``X``; ``obs["spot_id"]``
        matching the spot shapes' index).
    tiles_key
        Key of the spot-centred tiles (made if absent).
    size_um
        Width of the patch around each spot in um (HEST: 112 um).
    mpp
        Pixel size of the patches in um/px; defaults to the image's full resolution.
    context_um
        Head routes: neighbourhood context. Also use the mean features of the tiles whose
        centres lie within this distance (um); several distances add one mean each (rings of
        context, e.g. ``(300, 600)``). ``None`` uses the tile alone.
    standardise_sections
        Head routes: standardise features within each section (removes differences of stain and
        scanner between sections; prediction does the same on the new section).
    n_components
        Ridge route: reduce the standardised features to this many principal components first.
    alphas
        Ridge route: the penalties tried by inner cross-validation.
    arch
        CNN route: encoder architecture of :class:`histoexpr.models.SpotCNN`.
    hidden
        MLP route: width of the hidden layer.
    n_members
        MLP route: number of MLPs trained with successive seeds whose predictions are averaged
        (on her2st an ensemble of 3 gained about 0.02 mean Pearson over a single one).
    epochs
        MLP and CNN routes: maximum epochs (early stopping on a validation split).
    lr
        MLP and CNN routes: learning rate.
    batch_size
        MLP and CNN routes: spots per batch (also tiles per batch when embedding).
    val_fraction
        MLP and CNN routes: share of spots held out for early stopping, in ``(0, 1)``
        (these routes cannot train without a validation split; 0 is refused).
    candidates
        Route ``"auto"``: the options to choose from, as ``{option: [values]}`` for any of
        ``"encoder"``, ``"stain"``, ``"standardise_sections"``, ``"context_um"``, ``"target"``
        and ``"head"``; options left out take the values of the default grid:
        ``{"encoder": ["squidpy+handcrafted", "ssl", "random_cnn"], "stain": ["none",
        "macenko"], "standardise_sections": [True, False], "context_um": [[300, 600], None],
        "target": ["log1p", "centred", "standardised", "rank"], "head": ["ridge", "mlp"]}``
        (searched in this order, starting from the first values).
        One value per option trains that configuration without a search. The MLP head uses
        ``hidden``, ``n_members``, ``epochs`` and ``lr``; the ridge head ``alphas``.
    ssl_encoder
        Encoder ``"ssl"``: a pretrained :class:`~histoexpr.models.TileEncoder` or its model file
        (from :func:`histoexpr.tl.pretrain` on the training sections' tiles) to use instead of
        pretraining one inside ``fit``.
    pretrain_tiles_key
        Encoder ``"ssl"`` pretrained inside ``fit``: the unlabelled tiles of every training
        section to pretrain on; ``None`` makes 48 px tiles at ``mpp`` on a grid over the tissue
        (stride two tiles) in light copies of the sections (nothing is written to them).
    pretrain_epochs
        Encoder ``"ssl"`` pretrained inside ``fit``: SimCLR epochs (``None``: 6; batch 64,
        lr 1e-3, temperature 0.2, cosine schedule).
    subspot_um
        Ridge route: predict below the spot. Each spot tile of ``size_um`` is cut into a grid
        of sub-tiles of this width (``size_um`` must be a whole multiple, at least 2 x 2); the
        model is additive, a spot's prediction being the mean of its sub-tiles' predictions
        (ridge on the sub-tiles' mean features), and is applied to single sub-tiles:
        ``hx.tl.predict`` then maps expression at ``subspot_um`` (``metadata["patch_um"]``),
        on a grid finer than the spots or on any tiles of that width. With ``context_um``, each
        sub-tile also takes the mean features of the sub-tiles around it (predict on tiles that
        cover the tissue at that spacing). ``None``: one tile a spot.
    calibrate
        Head routes: calibrate the model on inner folds of the training sections (leave one
        section out; three spatial bands with one section), so that its predictions carry a
        domain-shift guard, conformal prediction intervals and each gene's inner Pearson (see
        :func:`histoexpr.tl.predict` and the page "What a prediction means"). It trains the
        head once more per training section (ridge: seconds; MLP: that many MLP trainings);
        ``route="auto"`` reuses the fits of its search, so it costs almost nothing there.
        ``False`` skips it; the predictions then state the guard and intervals as unavailable.
    """

    model: ClassVar[str] = "spot_regressor"

    def _check(self) -> None:
        super()._check()
        if self.val_fraction == 0 and self.route in ("mlp", "cnn"):
            raise ValueError(f"val_fraction=0: the {self.route!r} route cannot train without a "
                             "validation split (it stops early on it); pass a value in (0, 1), "
                             "e.g. val_fraction=0.15.")

    genes: int | Sequence[str] = 50
    gene_flavor: str = "top_expressed"
    route: Route = "ridge"
    encoder: str | Sequence[str] = "handcrafted"
    features_key: str | None = None
    image_key: str = "he"
    spots_key: str = "spots"
    table_key: str = "table"
    tiles_key: str = "spot_tiles"
    size_um: float = 112.0
    mpp: float | None = None
    context_um: float | Sequence[float] | None = None
    standardise_sections: bool = False
    n_components: int | None = None
    alphas: Sequence[float] = (0.1, 0.31622776601683794, 1.0, 3.1622776601683795, 10.0,
                               31.622776601683793, 100.0, 316.22776601683796, 1000.0,
                               3162.2776601683795, 10000.0, 31622.776601683792, 100000.0)
    arch: str = "small_cnn"
    hidden: int = 256
    n_members: int = 1
    epochs: int = 30
    lr: float = 0.001
    batch_size: int = 32
    val_fraction: float = 0.15
    device: str | None = None
    seed: int | None = None
    candidates: Mapping[str, Sequence[Any]] | None = None
    ssl_encoder: str | Path | Network | None = None
    pretrain_tiles_key: str | None = None
    pretrain_epochs: int | None = None
    subspot_um: float | None = None
    calibrate: bool = True


#: model name -> its options class
OPTIONS: dict[str, type[ModelOptions]] = {
    cls.model: cls for cls in (PatchClassifierOptions, CellMorphologyOptions, ABMILOptions,
                               MeanPoolRidgeOptions, MeanPoolLogisticOptions,
                               SpotRegressorOptions)
}


def options_for(model: str | ModelOptions, **overrides: Any) -> ModelOptions:
    """The options of ``model`` (a model name or an options object) with ``overrides`` set.

    A name gives the model's defaults; an options object is copied with the overrides
    replaced (:func:`dataclasses.replace`). Renamed options (:data:`RENAMED`) still work, with
    a ``FutureWarning`` naming the new one. An unknown option raises a ``TypeError`` naming it,
    the model and the model's options.
    """
    if isinstance(model, ModelOptions):
        name, base = model.model, model
    elif isinstance(model, str):
        if model not in OPTIONS:
            known = ", ".join(repr(m) for m in OPTIONS)
            close = difflib.get_close_matches(model, list(OPTIONS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Unknown model {model!r}; histoexpr trains: {known}.{hint}")
        name, base = model, None
    else:
        raise TypeError(f"model must be a model name or an options object such as "
                        f"hx.tl.SpotRegressorOptions(...), got {type(model).__name__}.")
    cls = OPTIONS[name]
    overrides = dict(overrides)
    for old, new in RENAMED.get(name, {}).items():
        if old in overrides:
            if new in overrides:
                raise TypeError(f"Model {name!r} got both {old!r} (deprecated) and {new!r}; "
                                f"pass only {new!r}.")
            warnings.warn(f"{cls.__name__}: {old!r} is deprecated and will be removed; use "
                          f"{new!r} instead.", FutureWarning, stacklevel=3)
            overrides[new] = overrides.pop(old)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in overrides if key not in valid]
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"{unknown[0]!r} is not an option of model {name!r}.{hint} Its options "
                        f"({cls.__name__}) are: {', '.join(valid)}.")
    return dataclasses.replace(base, **overrides) if base is not None else cls(**overrides)

