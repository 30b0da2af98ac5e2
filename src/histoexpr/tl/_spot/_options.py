"""The options of model ``"spot_regressor"``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from .._options import TrainingOptions, _documented

if TYPE_CHECKING:
    from ...models import Network

Route = Literal["ridge", "mlp", "cnn", "auto"]
#: the routes of the spot regressor, from the one ``Literal``
ROUTES: tuple[str, ...] = get_args(Route)


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
        ``hx.tl.predict`` then maps expression at ``subspot_um`` (``metadata["size_um"]``),
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
    renamed: ClassVar[Mapping[str, str]] = {"patch_um": "size_um"}

    def _check(self) -> None:
        """The rules between options: a combination that cannot train fails here."""
        super()._check()
        route = self.route
        if self.val_fraction == 0 and route in ("mlp", "cnn"):
            raise ValueError(f"val_fraction=0: the {route!r} route cannot train without a "
                             "validation split (it stops early on it); pass a value in (0, 1), "
                             "e.g. val_fraction=0.15.")
        if route == "cnn" and (self.context_um is not None or self.standardise_sections):
            raise ValueError("context_um and standardise_sections apply to the head routes "
                             "('ridge', 'mlp'); for the CNN route give a larger size_um.")
        if route == "cnn" and self.n_components is not None:
            raise ValueError("n_components (PCA before the ridge) applies to route='ridge'; the "
                             "'cnn' route learns its own features: drop n_components, or pass "
                             "route='ridge'.")
        if route == "auto" and (self.context_um is not None or self.standardise_sections
                                or self.n_components is not None
                                or self.features_key is not None
                                or self.encoder != "handcrafted"):
            raise ValueError("route='auto' chooses the encoder, context and scaling itself; give "
                             "the values to choose from as candidates={'encoder': [...], "
                             "'context_um': [...], 'standardise_sections': [...]} instead.")
        if self.candidates is not None and route != "auto":
            raise ValueError("candidates are the grid of route='auto'; pass route='auto', or "
                             "drop candidates to train one route.")
        network_encoder = isinstance(self.encoder, str) and self.encoder in ("ssl", "random_cnn")
        if (route in ("ridge", "mlp") and network_encoder and self.n_components is not None
                and self.subspot_um is None):
            raise ValueError("n_components applies to named encoders; the CNN encoders "
                             "'ssl' and 'random_cnn' are used without PCA.")
        if self.subspot_um is not None:
            from ._subspot import check_subspot_options

            check_subspot_options(route, self.encoder, self.size_um, self.subspot_um)

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
