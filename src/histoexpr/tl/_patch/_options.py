"""The options of the models of this room: ``"patch_classifier"`` and ``"cell_morphology"``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, get_args

from ..._core.validate import check_positive
from .._options import CommonOptions, TrainingOptions, _documented

if TYPE_CHECKING:
    from ...models import PatchEnsemble

Combine = Literal["auto", "ensemble", "best"]
#: the values of ``combine``
COMBINES: tuple[str, ...] = get_args(Combine)


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
        that later epochs do not read the image again (read in order before the first epoch
        when no loader workers read them); ``False`` reads every patch every epoch. Their
        memory is estimated first: a :class:`MemoryError` before any patch is kept when it
        exceeds ``hx.settings.max_memory`` (by default the memory available now).
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
    renamed: ClassVar[Mapping[str, str]] = {"patch_size_um": "size_um"}

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
    val_block_um: float | None = None
    combine: Combine = "auto"
    width: int = 16
    dropout: float = 0.2
    augment: bool = True
    cache: bool = True
    lr: float = 0.002
    weight_decay: float = 0.0001
    patience: int | None = 4
    calibrate: bool = True


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
    renamed: ClassVar[Mapping[str, str]] = {"folds": "n_folds"}

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
