"""The options of model ``"spot_regressor"``: one class per route over a shared base.

:class:`SpotRegressorOptions` holds the inputs every route reads (genes, keys, tile geometry,
seed, device); each route's class adds only the options that route reads, with their rules:
:class:`RidgeRouteOptions`, :class:`MLPRouteOptions`, :class:`CNNRouteOptions` and
:class:`AutoRouteOptions`. ``SpotRegressorOptions(route=..., **options)`` builds the route's
class, and ``hx.tl.fit`` dispatches on the class. An option given to a route that does not read
it is refused, naming the routes that do.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from ..._core.validate import (
    check_choice,
    check_element_name,
    check_int,
    check_store_name,
)
from .._options import (
    SHARED_DOCS,
    CommonOptions,
    TrainingOptions,
    _inherited_doc,
    _json_safe,
    _own_docs,
)

if TYPE_CHECKING:
    from ...models import Network

Route = Literal["ridge", "mlp", "cnn", "auto"]
#: the routes of the spot regressor, from the one ``Literal``
ROUTES: tuple[str, ...] = get_args(Route)

_ALPHAS = (0.1, 0.31622776601683794, 1.0, 3.1622776601683795, 10.0, 31.622776601683793, 100.0,
           316.22776601683796, 1000.0, 3162.2776601683795, 10000.0, 31622.776601683792,
           100000.0)


def _documented_route(cls: type) -> type:
    """Document every option of ``cls`` with the text of the class that declares it.

    Each class writes the ``Parameters`` of the options it declares; the full section is made
    here from the classes of its MRO (nearest first) and :data:`SHARED_DOCS`.
    """
    own = inspect.cleandoc(cls.__doc__ or "")
    cls._option_docs = _own_docs(own)
    summary = own.split("Parameters\n----------\n", 1)[0].rstrip()
    lines = [summary, "", "Parameters", "----------"]
    for f in dataclasses.fields(cls):
        text = cls._option_docs.get(f.name, _inherited_doc(cls, f.name))
        if text is None and f.name in SHARED_DOCS:
            text = "    " + SHARED_DOCS[f.name]
        if text is None:
            raise TypeError(f"{cls.__name__} does not document {f.name!r}.")
        lines += [f.name, text]
    cls.__doc__ = "\n".join(lines)
    init = inspect.signature(cls.__init__)  # the constructor's, not __new__'s (**options)
    cls.__signature__ = init.replace(parameters=list(init.parameters.values())[1:])
    return cls


def _route_class(route: Any) -> type[SpotRegressorOptions]:
    check_choice("route", route, Route)
    return ROUTE_OPTIONS[route]


def _refuse_foreign(cls: type[SpotRegressorOptions], given: Mapping[str, Any]) -> None:
    """Refuse the options of other routes given to route ``cls.route``.

    Names of no route are left to the constructor (its ``TypeError``).
    """
    own = {f.name for f in dataclasses.fields(cls)}
    for name in given:
        users = [r for r, c in ROUTE_OPTIONS.items()
                 if name in {f.name for f in dataclasses.fields(c)}]
        if name in own or not users:
            continue
        routes = ("route " if len(users) == 1 else "routes ") + ", ".join(map(repr, users))
        hint = cls._foreign_hint.get(name, "")
        raise ValueError(
            f"{name} is an option of {routes} of the spot regressor; route="
            f"{cls.route!r} ({cls.__name__}) does not read it. Drop {name}, or pass "
            f"route={users[0]!r}.{' ' + hint if hint else ''}")


@_documented_route
@dataclass(frozen=True, kw_only=True)
class SpotRegressorOptions(CommonOptions):
    """Options of model ``"spot_regressor"``: expression of spots from the H&E around them.

    The inputs every route reads; each route's class adds its own options
    (:class:`RidgeRouteOptions`, :class:`MLPRouteOptions`, :class:`CNNRouteOptions`,
    :class:`AutoRouteOptions`). ``SpotRegressorOptions(route=..., **options)`` returns the
    route's class (an instance of this one); an option of another route is refused.

    Parameters
    ----------
    genes
        The genes to predict: a number of genes chosen by :func:`histoexpr.pp.select_genes`
        with ``gene_flavor`` on all training sections, or a list of gene names (a single name
        is one gene).
    gene_flavor
        Ranking used when ``genes`` is a number (``"top_expressed"``, ``"pearson_residuals"``...).
    route
        ``"ridge"``, ``"mlp"``, ``"cnn"`` or ``"auto"`` (see :func:`histoexpr.tl.fit`); it picks
        the options class.
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
    batch_size
        Spots per batch of the MLP and CNN routes, and tiles per batch when embedding (at
        least 64 there).
    """

    model: ClassVar[str] = "spot_regressor"
    renamed: ClassVar[Mapping[str, str]] = {"patch_um": "size_um"}
    #: {option of another route: a hint added to its refusal}
    _foreign_hint: ClassVar[Mapping[str, str]] = {}

    genes: int | Sequence[str] = 50
    gene_flavor: str = "top_expressed"
    route: Route = "ridge"
    image_key: str = "he"
    spots_key: str = "spots"
    table_key: str = "table"
    tiles_key: str = "spot_tiles"
    size_um: float = 112.0
    mpp: float | None = None
    batch_size: int = 32

    def __new__(cls, *args: Any, **options: Any) -> SpotRegressorOptions:
        """The route's class for ``SpotRegressorOptions(route=...)``.

        Options of other routes are refused by name, also in ``dataclasses.replace`` (which
        calls the class).
        """
        target = cls
        if cls is SpotRegressorOptions:
            target = _route_class(options.get("route", "ridge"))
        if target is not SpotRegressorOptions:
            _refuse_foreign(target, options)
        return super().__new__(target)

    def _check(self) -> None:
        super()._check()
        if type(self) is SpotRegressorOptions:
            raise TypeError("SpotRegressorOptions is the base of the routes' options; build "
                            "it as SpotRegressorOptions(route=...).")
        _check_genes(self.genes)
        # the tiles fit makes are elements of the user's sections (and their table's name)
        check_element_name("tiles_key", self.tiles_key)
        if self.route != type(self).__dataclass_fields__["route"].default:
            own = type(self).__dataclass_fields__["route"].default
            raise ValueError(f"{type(self).__name__} is the options of route={own!r}, not "
                             f"route={self.route!r}; pass SpotRegressorOptions(route="
                             f"{self.route!r}, ...) or {ROUTE_OPTIONS[self.route].__name__}.")

    @classmethod
    def _variants(cls) -> list[type[SpotRegressorOptions]]:
        """The shared base, then one class per route."""
        return [SpotRegressorOptions, *ROUTE_OPTIONS.values()]

    def _replaced(self, **overrides: Any) -> SpotRegressorOptions:
        """A copy with ``overrides``; a new ``route`` keeps the options that route reads.

        The options of this route that the new one does not read are refused when they differ
        from their defaults (the user's choices, which the new route would drop silently); at
        their defaults they are left out.
        """
        route = overrides.get("route", self.route)
        if route == self.route:
            return dataclasses.replace(self, **overrides)
        target = _route_class(route)
        reads = {f.name for f in dataclasses.fields(target)}
        dropped = [f"{f.name}={_shown(getattr(self, f.name))}"
                   for f in dataclasses.fields(self)
                   if f.name not in reads and f.name not in overrides
                   and _json_safe(getattr(self, f.name)) != _json_safe(_default(f))]
        if dropped:
            raise ValueError(
                f"Changing route={self.route!r} to route={route!r} would drop "
                f"{', '.join(dropped)}: options of route={self.route!r} "
                f"({type(self).__name__}) set to other values than their defaults, which "
                f"route={route!r} ({target.__name__}) does not read. Drop them (leave them at "
                f"their defaults), or pass options of route={route!r} "
                f"(hx.tl.SpotRegressorOptions(route={route!r}, ...)) instead of changing the "
                f"route.")
        kept = {f.name: getattr(self, f.name) for f in dataclasses.fields(target)
                if hasattr(self, f.name) and f.name not in overrides}
        kept.pop("route", None)
        return SpotRegressorOptions(**kept, **overrides)


def _check_genes(genes: Any) -> None:
    """``genes``: a number of genes to choose (at least 1), one gene name, or a non-empty list."""
    if isinstance(genes, numbers.Integral) and not isinstance(genes, bool):
        check_int("genes", genes, minimum=1)
        return
    how = ("pass a list of gene names (e.g. genes=['EPCAM', 'PTPRC']) or a number of genes to "
           "choose (e.g. genes=50)")
    if isinstance(genes, str):
        if not genes:
            raise ValueError(f"genes is an empty string; {how}.")
        return
    try:
        listed = list(genes)
    except TypeError:
        raise TypeError(f"genes must be gene names or a number of genes, got {genes!r} "
                        f"({type(genes).__name__}); {how}.") from None
    if not listed:
        raise ValueError(f"genes is empty: there is nothing to predict; {how}.")
    odd = [g for g in listed if not isinstance(g, str)]
    if odd:
        raise TypeError(f"genes must be gene names (strings), but holds {odd[0]!r} "
                        f"({type(odd[0]).__name__}); {how}.")


def _default(f: dataclasses.Field) -> Any:
    """A field's default value, also where it is made by a factory."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _shown(value: Any) -> str:
    """An option's value in a message: its record form (a network by its class)."""
    safe = _json_safe(value)
    return safe if isinstance(safe, str) and not isinstance(value, str | Path) else repr(safe)


@_documented_route
@dataclass(frozen=True, kw_only=True)
class _HeadRouteOptions(SpotRegressorOptions):
    """Options of the routes with a head on tile features: ``"ridge"``, ``"mlp"``, ``"auto"``.

    Parameters
    ----------
    ssl_encoder
        Encoder ``"ssl"``: a pretrained :class:`~histoexpr.models.TileEncoder` or its model file
        (from :func:`histoexpr.tl.pretrain` on the training sections' tiles) to use instead of
        pretraining one inside ``fit``. On a CPU that pretraining is most of the cost of
        ``route="auto"`` (on her2st C2-C4 with the default grid, 212-227 of 270-281 CPU s on a
        2-core CPU, ``benchmarks/README.md``): pretrain once and pass the file to every
        ``fit`` that searches the same sections.
    pretrain_tiles_key
        Encoder ``"ssl"`` pretrained inside ``fit``: the unlabelled tiles of every training
        section to pretrain on; ``None`` makes 48 px tiles at ``mpp`` on a grid over the tissue
        (stride two tiles) in light copies of the sections (nothing is written to them).
    pretrain_epochs
        Encoder ``"ssl"`` pretrained inside ``fit``: SimCLR epochs (``None``: 6; batch 64,
        lr 1e-3, temperature 0.2, cosine schedule).
    calibrate
        Head routes: calibrate the model on inner folds of the training sections (leave one
        section out; three spatial bands with one section), so that its predictions carry a
        domain-shift guard, conformal prediction intervals and each gene's inner Pearson (see
        :func:`histoexpr.tl.predict` and the page "What a prediction means"). It trains the
        head once more per training section (ridge: seconds; MLP: that many MLP trainings);
        ``route="auto"`` reuses the fits of its search, so it costs almost nothing there.
        ``False`` skips it; the predictions then state the guard and intervals as unavailable.
    """

    ssl_encoder: str | Path | Network | None = None
    pretrain_tiles_key: str | None = None
    pretrain_epochs: int | None = None
    calibrate: bool = True


@_documented_route
@dataclass(frozen=True, kw_only=True)
class _EncoderRouteOptions(_HeadRouteOptions):
    """Options of the routes on one given encoder's features (``"ridge"``, ``"mlp"``).

    Parameters
    ----------
    encoder
        Frozen encoder of the head routes, as :func:`histoexpr.tl.embed` takes it
        (``"handcrafted"``, ``"squidpy"``, an architecture, a model file, or a list of them
        whose features are concatenated). Prediction recomputes the same features on new tiles,
        so the encoder must have fixed weights: architecture names without weights (random)
        are refused. The encoder's fingerprint (a digest of a model file) is recorded. Not a
        network object: save a network of your own with :func:`histoexpr.io.save_model` (its
        class registered with :func:`histoexpr.models.register_network`) and pass the file,
        or embed the tiles with it yourself and pass ``features_key``.
    features_key
        Key of the embeddings in the tile table's ``obsm``; defaults to ``f"X_{encoder}"``
        (names of a list joined by ``"+"``, a model file by its stem, ``:`` replaced by
        ``_``). One plain name (no ``/``): it becomes a folder when a section is saved.
        Features already there are reused when their record (``uns["embeddings"]``, written by
        :func:`histoexpr.tl.embed`) shows the same
        encoder, image and tiles; features an earlier fit made otherwise are remade, others
        are refused. Features without a record are your own and are used as they are
        (prediction then needs the same kind of features under that key), and so are features
        that :func:`histoexpr.tl.embed` made with a network object of yours
        (``hx.tl.embed(sdata, tiles_key, encoder=net, key_added=...)``) on these tiles, when
        ``encoder`` is left at ``"handcrafted"``: prediction then needs features of the same
        network (the same fingerprint) under that key.
    context_um
        Head routes: neighbourhood context. Also use the mean features of the tiles whose
        centres lie within this distance (um); several distances add one mean each (rings of
        context, e.g. ``(300, 600)``). ``None`` uses the tile alone.
    standardise_sections
        Head routes: standardise features within each section (removes differences of stain and
        scanner between sections; prediction does the same on the new section).
    """

    encoder: str | Path | Sequence[str | Path] = "handcrafted"
    features_key: str | None = None
    context_um: float | Sequence[float] | None = None
    standardise_sections: bool = False

    def _check(self) -> None:
        super()._check()
        object.__setattr__(self, "encoder", _checked_encoder(self.encoder))
        if self.features_key is not None:  # an obsm key: a folder name when a section is saved
            check_store_name("features_key", self.features_key,
                             what="set of features in the tile table's obsm")

    @property
    def network_encoder(self) -> bool:
        """Whether the encoder is a CNN trained inside ``fit`` (``"ssl"``, ``"random_cnn"``)."""
        return isinstance(self.encoder, str) and self.encoder in ("ssl", "random_cnn")


def _checked_encoder(encoder: Any) -> str | list[str] | tuple[str, ...]:
    """The head routes' ``encoder``: a name or file, or a list of them (paths as strings).

    Anything else is refused before any work; a network object with how to use an encoder of
    one's own (the model must make the same features again on new slides, from a name or file).
    """
    import os

    many = isinstance(encoder, list | tuple)
    given = list(encoder) if many else [encoder]
    for one in given:
        if isinstance(one, str) and one or isinstance(one, os.PathLike):
            continue
        if isinstance(one, str):
            raise ValueError("encoder='' names no encoder; pass a name or a model file, e.g. "
                             "encoder='handcrafted'.")
        if hasattr(one, "forward") and hasattr(one, "parameters"):  # a torch network
            name = type(one).__name__
            raise TypeError(
                f"encoder= of the spot regressor takes an encoder's name or model file (or a "
                f"list of them), not a network object ({name}): prediction makes the same "
                f"features again on new slides, from a name or a file. To use a network of "
                f"your own, save it with hx.io.save_model(net, 'my_encoder.pt') (its class "
                f"registered with hx.models.register_network({name})) and pass "
                f"encoder='my_encoder.pt'; or embed each section's tiles yourself, "
                f"hx.tl.embed(sdata, tiles_key, encoder=net, key_added='X_mine'), and pass "
                f"features_key='X_mine' (prediction then needs the same features under that "
                f"key: embed the new slide's tiles alike and pass tiles_key=).")
        raise TypeError(f"encoder= takes an encoder's name ('handcrafted', 'squidpy', ...), a "
                        f"model file (.pt) or a list of them, got {one!r} "
                        f"({type(one).__name__}).")
    if not given:
        raise ValueError("encoder=[] names no encoder; pass a name or a model file (or a list "
                         "of them), e.g. encoder='handcrafted'.")
    checked = [os.fspath(one) if isinstance(one, os.PathLike) else one for one in given]
    return type(encoder)(checked) if many else checked[0]


def _check_validation_split(options: TrainingOptions) -> None:
    if options.val_fraction == 0:
        raise ValueError(f"val_fraction=0: the {options.route!r} route cannot train without a "
                         "validation split (it stops early on it); pass a value in (0, 1), "
                         "e.g. val_fraction=0.15.")


@_documented_route
@dataclass(frozen=True, kw_only=True)
class RidgeRouteOptions(_EncoderRouteOptions):
    """Options of ``route="ridge"``: ridge regression on a frozen encoder's tile features.

    Parameters
    ----------
    n_components
        Ridge route: reduce the standardised features to this many principal components first.
    alphas
        Ridge route: the penalties tried by inner cross-validation.
    subspot_um
        Ridge route: predict below the spot. Each spot tile of ``size_um`` is cut into a grid
        of sub-tiles of this width (``size_um`` must be a whole multiple, at least 2 x 2); the
        model is additive, a spot's prediction being the mean of its sub-tiles' predictions
        (ridge on the sub-tiles' mean features), and is applied to single sub-tiles:
        ``hx.tl.predict`` then maps expression at ``subspot_um`` (``metadata["size_um"]``),
        on a grid finer than the spots or on any tiles of that width. With ``context_um``, each
        sub-tile also takes the mean features of the sub-tiles around it (predict on tiles that
        cover the tissue at that spacing). ``None``: one tile a spot.
    """

    route: Route = "ridge"
    n_components: int | None = None
    alphas: Sequence[float] = _ALPHAS
    subspot_um: float | None = None

    def _check(self) -> None:
        super()._check()
        if self.network_encoder and self.n_components is not None and self.subspot_um is None:
            raise ValueError("n_components applies to named encoders; the CNN encoders "
                             "'ssl' and 'random_cnn' are used without PCA.")
        if self.subspot_um is not None:
            from ._subspot import check_subspot_options

            check_subspot_options(self.route, self.encoder, self.size_um, self.subspot_um)


@_documented_route
@dataclass(frozen=True, kw_only=True)
class MLPRouteOptions(_EncoderRouteOptions, TrainingOptions):
    """Options of ``route="mlp"``: a small MLP on a frozen encoder's tile features.

    Parameters
    ----------
    hidden
        MLP route: width of the hidden layer.
    n_members
        MLP route: number of MLPs trained with successive seeds whose predictions are averaged
        (on her2st an ensemble of 3 gained about 0.02 mean Pearson over a single one).
    epochs
        MLP route: maximum epochs (early stopping on a validation split).
    lr
        MLP route: learning rate.
    val_fraction
        MLP route: share of spots held out for early stopping, in ``(0, 1)`` (the route
        cannot train without a validation split; 0 is refused).
    """

    route: Route = "mlp"
    hidden: int = 256
    n_members: int = 1
    epochs: int = 30
    val_fraction: float = 0.15

    def _check(self) -> None:
        super()._check()
        _check_validation_split(self)


@_documented_route
@dataclass(frozen=True, kw_only=True)
class CNNRouteOptions(SpotRegressorOptions, TrainingOptions):
    """Options of ``route="cnn"``: a :class:`~histoexpr.models.SpotCNN` trained end to end.

    Parameters
    ----------
    arch
        CNN route: encoder architecture of :class:`histoexpr.models.SpotCNN`.
    epochs
        CNN route: maximum epochs (early stopping on a validation split).
    lr
        CNN route: learning rate.
    val_fraction
        CNN route: share of spots held out for early stopping, in ``(0, 1)`` (the route
        cannot train without a validation split; 0 is refused).
    """

    _foreign_hint: ClassVar[Mapping[str, str]] = {
        "context_um": "The CNN route learns from the patch alone: give a larger size_um.",
        "standardise_sections": "The CNN route learns from the patch alone: give a larger "
                                "size_um.",
        "n_components": "The CNN route learns its own features.",
    }

    route: Route = "cnn"
    arch: str = "small_cnn"
    epochs: int = 30
    val_fraction: float = 0.15

    def _check(self) -> None:
        super()._check()
        _check_validation_split(self)


_AUTO_HINT = ("route='auto' chooses the encoder, context and scaling itself; give the values to "
              "choose from as candidates={'encoder': [...], 'context_um': [...], "
              "'standardise_sections': [...]} instead.")


@_documented_route
@dataclass(frozen=True, kw_only=True)
class AutoRouteOptions(_HeadRouteOptions, TrainingOptions):
    """Options of ``route="auto"``: the head routes' options chosen by inner cross-validation.

    Parameters
    ----------
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
    alphas
        Ridge head: the penalties tried by inner cross-validation.
    hidden
        MLP head: width of the hidden layer.
    n_members
        MLP head: number of MLPs trained with successive seeds whose predictions are averaged.
    epochs
        MLP head: maximum epochs (early stopping on a validation split).
    lr
        MLP head: learning rate.
    val_fraction
        MLP head: share of spots held out for early stopping, in ``[0, 1)``.
    """

    _foreign_hint: ClassVar[Mapping[str, str]] = {
        name: _AUTO_HINT for name in ("encoder", "features_key", "context_um",
                                      "standardise_sections", "n_components")}

    route: Route = "auto"
    candidates: Mapping[str, Sequence[Any]] | None = None
    alphas: Sequence[float] = _ALPHAS
    hidden: int = 256
    n_members: int = 1
    epochs: int = 30
    val_fraction: float = 0.15


#: route -> its options class
ROUTE_OPTIONS: dict[str, type[SpotRegressorOptions]] = {
    "ridge": RidgeRouteOptions, "mlp": MLPRouteOptions, "cnn": CNNRouteOptions,
    "auto": AutoRouteOptions}
assert tuple(ROUTE_OPTIONS) == ROUTES
