"""The locked protocol of the spot regressor: ``route="auto"`` chooses every option by inner folds.

Everything (features, stain normalisation, per-section scaling, context, target transform,
head) is chosen by leave-one-section-out on the training sections given to ``fit`` (three
spatial bands of spots when there is one section), and the chosen configuration is then trained
on all of them. The search is coordinate-wise over the grid's options, in the grid's order: the
first value of every option is the starting point; each option in turn is set to its best value
(mean inner Pearson) with the others fixed at their best so far. Its cost is the sum, not the
product, of the numbers of values. Features are computed once per section, encoder and stain
and shared by every candidate (context and scaling are cheap operations on them).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._core.image import REGIONS
from ..._core.logs import logger
from .._metrics._expression_metrics import column_pearson

if TYPE_CHECKING:
    from ._options import AutoRouteOptions

#: the encoder the "ssl" and "random_cnn" candidates use (bench_pretrain.py's her2st recipe)
CNN_CONFIG = {"arch": "small_cnn", "in_channels": 3, "width": 32, "pool_levels": True}
#: SimCLR options of the "ssl" candidate when it is pretrained inside fit
PRETRAIN_OPTIONS = {"method": "simclr", "epochs": 6, "batch_size": 64, "lr": 1e-3,
                    "temperature": 0.2}
#: pretraining tiles made inside fit when none are given: this many pixels at the model's mpp,
#: on a grid over the tissue with a stride of two tiles
PRETRAIN_TILE_PX = 48

#: the default candidate grid of ``route="auto"`` (option -> values; first value = start);
#: keep the spot regressor's ``fit`` docstring in step with it
AUTO_GRID: dict[str, tuple] = {
    "encoder": ("squidpy+handcrafted", "ssl", "random_cnn"),
    "stain": ("none", "macenko"),
    "standardise_sections": (True, False),
    "context_um": ((300.0, 600.0), None),
    "target": ("log1p", "centred", "standardised", "rank"),
    "head": ("ridge", "mlp"),
}
#: encoders computed by histoexpr.tl.embed by name
NAMED_ENCODERS = {"squidpy+handcrafted": ["squidpy", "handcrafted"], "squidpy": "squidpy",
                  "handcrafted": "handcrafted"}
NETWORK_ENCODERS = ("ssl", "random_cnn")
TARGETS = ("log1p", "centred", "standardised", "rank")
HEADS = ("ridge", "mlp")
STAINS = ("none", "macenko")


def pretrain_encoder(sections: Sequence[Any], tiles_key: str, *, epochs: int | None = None,
                     seed: int | None = 0, device: str | None = None):
    """SimCLR-pretrain the candidate CNN on the unlabelled tiles ``tiles_key`` of ``sections``."""
    import torch

    from ...models import TileEncoder
    from .._features._pretrain import pretrain

    torch.manual_seed(0 if seed is None else seed)
    start = TileEncoder(**CNN_CONFIG)
    options = dict(PRETRAIN_OPTIONS)
    if epochs is not None:
        options["epochs"] = epochs
    return pretrain(list(sections), tiles_key, encoder=start, seed=seed, device=device,
                    **options)


def check_grid(candidates: Mapping[str, Sequence] | None) -> dict[str, list]:
    """The grid to search: ``AUTO_GRID`` with the given options replaced, values checked."""
    grid = {key: list(values) for key, values in AUTO_GRID.items()}
    for key, values in (candidates or {}).items():
        if key not in AUTO_GRID:
            raise ValueError(f"Unknown option {key!r} in candidates; route='auto' chooses "
                             f"{list(AUTO_GRID)}.")
        values = [values] if isinstance(values, str) or values is None else list(values)
        if not values:
            raise ValueError(f"candidates[{key!r}] is empty; give at least one value.")
        grid[key] = values
    allowed = {"encoder": (*NAMED_ENCODERS, *NETWORK_ENCODERS), "stain": STAINS,
               "standardise_sections": (True, False), "target": TARGETS, "head": HEADS}
    for key, known in allowed.items():
        wrong = [v for v in grid[key] if v not in known]
        if wrong:
            raise ValueError(f"candidates[{key!r}] has {wrong}; choose from {list(known)}.")
    grid["context_um"] = [None if v is None else _as_radii(v) for v in grid["context_um"]]
    return grid


def _as_radii(value) -> list[float]:
    radii = [value] if np.isscalar(value) else list(value)
    if not radii or not all(float(r) > 0 for r in radii):
        raise ValueError(f"context_um candidates are positive distances in um (or None), got "
                         f"{value!r}.")
    return [float(r) for r in radii]


class _Features:
    """Features of the training sections per (encoder, stain), computed once and shared."""

    def __init__(self, prepared, *, tiles_key: str, image_key: str, mpp: float,
                 ssl_encoder, pretrain_tiles_key: str | None, pretrain_epochs: int | None,
                 batch_size: int, device: str | None, seed: int | None) -> None:
        self.prepared, self.tiles_key = prepared, tiles_key
        self.image_key, self.mpp = image_key, mpp
        self.ssl_encoder, self.pretrain_tiles_key = ssl_encoder, pretrain_tiles_key
        self.pretrain_epochs, self.batch_size, self.device, self.seed = (
            pretrain_epochs, batch_size, device, seed)
        self.networks: dict[str, Any] = {}
        self.reference: dict | None = None
        self.normalisers: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}
        self.digests: dict[str, str] = {}
        #: every tile's features by (section, encoder, stain, context, scaling): made once, read
        #: by every candidate and inner fold that asks for them
        self.cache: dict[tuple, np.ndarray] = {}

    def network(self, name: str):
        """The CNN of a network encoder candidate: pretrained (SSL) or at random init."""
        if name in self.networks:
            return self.networks[name]
        import torch

        from ...models import TileEncoder

        began = time.perf_counter()
        if name == "random_cnn":
            torch.manual_seed(0 if self.seed is None else self.seed)
            network = TileEncoder(**CNN_CONFIG)
            network.metadata = {"normalisation": {"mean": 0.5, "std": 0.25}}
        elif self.ssl_encoder is not None:
            network = self._load(self.ssl_encoder)
        else:
            network = pretrain_encoder(self._pretraining_sections(), self._pretrain_key,
                                       epochs=self.pretrain_epochs, seed=self.seed,
                                       device=self.device)
        self.seconds[f"encoder {name}"] = round(time.perf_counter() - began, 1)
        self.networks[name] = network.eval()
        return network

    def _load(self, encoder):
        from ...io import load_model
        from ...models import TileEncoder

        network = encoder if isinstance(encoder, TileEncoder) else load_model(encoder,
                                                                               device="cpu")
        if not isinstance(network, TileEncoder):
            raise TypeError(f"ssl_encoder must be a TileEncoder or its model file (from "
                            f"hx.tl.pretrain), got a {type(network).__name__}.")
        return network

    @property
    def _pretrain_key(self) -> str:
        return self.pretrain_tiles_key or "_auto_pretrain_tiles"

    def _pretraining_sections(self) -> list:
        """Sections holding unlabelled grid tiles: the user's, or light copies with new ones."""
        from spatialdata import SpatialData

        from ...pp import tile

        key = self.pretrain_tiles_key
        if key is not None:
            missing = [p.name for p in self.prepared if key not in p.sdata.shapes]
            if missing:
                raise KeyError(f"pretrain_tiles_key={key!r} is missing from sections {missing}; "
                               "tile them (hx.pp.tile) or pass None to let fit make them.")
            return [p.sdata for p in self.prepared]
        copies = []
        for p in self.prepared:  # never written into the user's sections
            light = SpatialData(images={self.image_key: p.sdata.images[self.image_key]},
                                labels=dict(p.sdata.labels))
            tile(light, self.image_key, size_px=PRETRAIN_TILE_PX, mpp=self.mpp, min_tissue=0.5,
                 stride_px=2 * PRETRAIN_TILE_PX, key_added=self._pretrain_key)
            copies.append(light)
        return copies

    def stain_reference(self) -> dict:
        if self.reference is None:
            from ...pp import stain_reference

            self.reference = stain_reference([p.sdata for p in self.prepared], self.tiles_key)
        return self.reference

    def normaliser(self, section):
        if section.name not in self.normalisers:
            from ...pp import stain_normaliser

            self.normalisers[section.name] = stain_normaliser(
                section.sdata, self.tiles_key, reference=self.stain_reference())
        return self.normalisers[section.name]

    def encoder_argument(self, name: str):
        return self.network(name) if name in NETWORK_ENCODERS else NAMED_ENCODERS[name]

    def key(self, name: str) -> str:
        """The obsm key of an encoder's features (a hash of its weights for networks)."""
        if name not in NETWORK_ENCODERS:
            return f"X_{name}"
        if name not in self.digests:
            self.digests[name] = weights_digest(self.network(name))
        return f"X_{name}_{self.digests[name]}"

    def of(self, section, candidate: Mapping[str, Any]) -> np.ndarray:
        """A candidate's features of the labelled spots of one section."""
        return self.all_tiles(section, candidate)[section.tile_rows]

    def all_tiles(self, section, candidate: Mapping[str, Any]) -> np.ndarray:
        """Every tile's features under a candidate, computed on the first call only."""
        context = candidate["context_um"]
        cached = (section.name, candidate["encoder"], candidate["stain"],
                  None if context is None else tuple(context),
                  bool(candidate["standardise_sections"]))
        if cached not in self.cache:
            self.cache[cached] = self._compute(section, candidate)
        return self.cache[cached]

    def _compute(self, section, candidate: Mapping[str, Any]) -> np.ndarray:
        from ._spot_features import section_features

        name = candidate["encoder"]
        key, transform = self.key(name), None
        if candidate["stain"] != "none":
            transform = self.normaliser(section)
            key = f"{key}_{candidate['stain']}_{transform.digest}"
        began = time.perf_counter()
        features, _ = section_features(section.sdata, self.tiles_key,
                                       encoder=self.encoder_argument(name), features_key=key,
                                       context_um=candidate["context_um"],
                                       standardise=candidate["standardise_sections"],
                                       batch_size=max(self.batch_size, 64), device=self.device,
                                       transform=transform)
        label = f"features {name}, stain {candidate['stain']}"
        self.seconds[label] = round(self.seconds.get(label, 0) + time.perf_counter() - began, 1)
        return features


def weights_digest(network) -> str:
    digest = hashlib.sha1()
    for name, value in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:10]


def transform_targets(y: np.ndarray, how: str) -> np.ndarray:
    """One section's targets under a target transform (statistics of that section alone)."""
    if how == "log1p":
        return y
    centred = y - y.mean(axis=0)
    if how == "centred":
        return centred
    if how == "standardised":
        scale = y.std(axis=0)
        return centred / np.where(scale > 0, scale, 1)
    from scipy.special import ndtri
    from scipy.stats import rankdata

    return ndtri((rankdata(y, axis=0) - 0.5) / len(y))  # normal scores of the ranks


def _fit_head(features: list[np.ndarray], targets: list[np.ndarray], candidate,
              options: AutoRouteOptions):
    from ._spot_training import fit_mlp, fit_ridge

    y = [transform_targets(t, candidate["target"]).astype(np.float32) for t in targets]
    if candidate["head"] == "ridge":
        return fit_ridge(features, y, alphas=options.alphas, n_components=None)
    return fit_mlp(features, y, hidden=options.hidden, n_members=options.n_members,
                   epochs=options.epochs, lr=options.lr, batch_size=options.batch_size,
                   val_fraction=options.val_fraction, device=options.device, seed=options.seed)


def _apply(network, features: np.ndarray) -> np.ndarray:
    import torch

    network = network.to("cpu").eval()
    with torch.inference_mode():
        return network(torch.from_numpy(np.asarray(features, dtype=np.float32))).numpy()


def inner_folds(prepared) -> tuple[str, list]:
    """Inner folds as (name, training parts, test part); parts are (section, rows) pairs.

    Several sections: leave one section out. One section: three bands of spots of equal size
    along the image's longer axis, each held out in turn (neighbouring spots share expression,
    so random folds would flatter a candidate).
    """
    if len(prepared) >= 2:
        folds = []
        for held in prepared:
            train = [(p, np.arange(len(p.targets))) for p in prepared if p is not held]
            folds.append((held.name, train, (held, np.arange(len(held.targets)))))
        return "leave-one-section-out", folds
    section = prepared[0]
    centres = np.asarray(section.centres)
    axis = int(np.ptp(centres[:, 1]) > np.ptp(centres[:, 0]))
    order = np.argsort(centres[:, axis], kind="stable")
    if len(order) < 9:
        raise ValueError(f"route='auto' on one section needs at least 9 spots for its three "
                         f"spatial folds; section {section.name!r} has {len(order)}.")
    bands = np.array_split(order, 3)
    folds = [(f"{section.name} band {i}",
              [(section, np.sort(np.concatenate([b for j, b in enumerate(bands) if j != i])))],
              (section, np.sort(band))) for i, band in enumerate(bands)]
    return "three spatial bands of one section", folds


def evaluate_candidate(candidate, features: _Features, folds, options: AutoRouteOptions, *,
                       keep: list | None = None) -> dict[str, Any]:
    """Mean Pearson over genes on each inner test part; the candidate's score is their mean.

    ``keep`` receives each fold's held-out (predicted, measured) values, log1p-normalised.
    """
    scores = {}
    for name, train, (test, test_rows) in folds:
        x = [features.of(section, candidate)[rows] for section, rows in train]
        y = [section.targets[rows] for section, rows in train]
        network, _ = _fit_head(x, y, candidate, options)
        predicted = _apply(network, features.of(test, candidate)[test_rows])
        scores[name] = float(np.nanmean(column_pearson(predicted, test.targets[test_rows])))
        if keep is not None:
            keep.append((_on_log1p_scale(predicted, candidate["target"], y),
                         test.targets[test_rows]))
    values = [v for v in scores.values() if np.isfinite(v)]
    return {"folds": scores, "mean": float(np.mean(values)) if values else float("nan")}


def search(grid: Mapping[str, list], evaluate) -> tuple[dict, list[dict]]:
    """Coordinate-wise search: each option in turn takes its best value, the others fixed."""
    current = {key: values[0] for key, values in grid.items()}
    results: dict[str, dict] = {}

    def score(candidate) -> float:
        key = repr(sorted(candidate.items()))
        if key not in results:
            results[key] = {"candidate": dict(candidate), **evaluate(candidate)}
            logger.info("route='auto': %s -> inner Pearson %.3f", _describe(candidate),
                        results[key]["mean"])
        value = results[key]["mean"]
        return value if np.isfinite(value) else -np.inf

    if all(len(values) == 1 for values in grid.values()):
        return current, []
    for option, values in grid.items():
        if len(values) > 1:
            best = max(values, key=lambda v: score({**current, option: v}))  # first of ties
            current[option] = best
    return current, list(results.values())


def _describe(candidate) -> str:
    return ", ".join(f"{k}={v}" for k, v in candidate.items())


def fit_auto(prepared, options: AutoRouteOptions, *, mpp: float):
    """Search the grid by inner folds, then train the chosen configuration on every section.

    ``options`` are the route's (:class:`AutoRouteOptions`): ``candidates`` give the grid, the
    heads read their own options; ``mpp`` is the pixel size the sections were prepared at.
    Returns the network and its metadata (without the fields ``fit`` adds for every route).
    Every encoder and stain of the search describes the same spot tiles: each is read from the
    image once (:data:`histoexpr._core.image.REGIONS`, dropped at the end).
    """
    with REGIONS.kept():
        return _search_and_fit(prepared, options, mpp=mpp)


def _search_and_fit(prepared, options: AutoRouteOptions, *, mpp: float):
    began = time.perf_counter()
    grid = check_grid(options.candidates)
    features = _Features(prepared, tiles_key=options.tiles_key, image_key=options.image_key,
                         mpp=mpp, ssl_encoder=options.ssl_encoder,
                         pretrain_tiles_key=options.pretrain_tiles_key,
                         pretrain_epochs=options.pretrain_epochs, batch_size=options.batch_size,
                         device=options.device, seed=options.seed)
    scheme, folds = inner_folds(prepared)
    kept: dict[str, list] = {}  # held-out predictions of every candidate, for the calibration
    chosen, results = search(grid, lambda c: evaluate_candidate(
        c, features, folds, options, keep=kept.setdefault(repr(sorted(c.items())), [])))
    searched = time.perf_counter() - began
    x = [features.of(p, chosen) for p in prepared]
    y = [p.targets for p in prepared]
    head, extra = _log1p_head(x, y, chosen, options)
    if options.calibrate:
        from ._calibration import calibrate, network_refit

        extra["calibration"] = calibrate(
            prepared, x, network_refit(lambda xs, ys: _log1p_head(xs, ys, chosen, options)[0]),
            guard_features=[features.of(p, {**chosen, "context_um": None,
                                            "standardise_sections": False}) for p in prepared],
            inner=kept.get(repr(sorted(chosen.items()))) or None)
    name = chosen["encoder"]
    metadata = {"route": "auto", "head": chosen["head"], "target": chosen["target"],
                "features_key": features.key(name), "context_um": chosen["context_um"] or [],
                "standardise_sections": bool(chosen["standardise_sections"]),
                "stain": features.stain_reference() if chosen["stain"] != "none" else None,
                **extra}
    if name in NETWORK_ENCODERS:
        from ...models import EncoderHead

        encoder = features.network(name)
        network = EncoderHead(encoder=encoder.get_config(), head=type(head).__name__,
                              head_config=head.get_config())
        network.encoder.load_state_dict(encoder.state_dict())
        network.head.load_state_dict(head.state_dict())
        network.eval()
        encoder_metadata = getattr(encoder, "metadata", {}) or {}
        metadata.update({"encoder": name, "encoder_in_model": True,
                         "encoder_normalisation": encoder_metadata.get("normalisation")})
        if "pretraining" in encoder_metadata:
            metadata["encoder_pretraining"] = {
                k: encoder_metadata["pretraining"][k]
                for k in ("epochs", "n_tiles", "n_sections", "loss", "seconds", "seed")
                if k in encoder_metadata["pretraining"]}
    else:
        network = head
        metadata["encoder"] = NAMED_ENCODERS[name]
    metadata["auto"] = {
        "grid": {k: list(v) for k, v in grid.items()},
        "search": results,
        "chosen": dict(chosen),
        "inner_folds": scheme,
        "search_seconds": round(searched, 1),
        "seconds": round(time.perf_counter() - began, 1),
        "feature_seconds": dict(features.seconds),
    }
    logger.info("route='auto' chose %s (%s, %.0f s).", _describe(chosen), scheme,
                time.perf_counter() - began)
    return network, metadata


def _log1p_head(x: list[np.ndarray], y: list[np.ndarray], candidate,
                options: AutoRouteOptions):
    """A head of ``candidate`` trained on ``x``, ``y``, predicting log1p-normalised values."""
    head, extra = _fit_head(x, y, candidate, options)
    pooled = np.vstack(y).astype(np.float64)
    _fold_target_transform(head, candidate["target"], pooled.mean(axis=0), pooled.std(axis=0))
    return head, extra


def _on_log1p_scale(predicted: np.ndarray, how: str, y: list[np.ndarray]) -> np.ndarray:
    """Predictions of a head trained on ``how`` targets, on the pooled training spots' scale."""
    if how == "log1p":
        return predicted
    pooled = np.vstack(y).astype(np.float64)
    mean, scale = pooled.mean(axis=0), pooled.std(axis=0)
    scale = np.where(scale > 0, scale, 1) if how in ("standardised", "rank") else 1.0
    return (predicted * scale + mean).astype(np.float32)


def _fold_target_transform(head, how: str, mean: np.ndarray, scale: np.ndarray) -> None:
    """Make a head trained on transformed targets predict log1p-normalised expression.

    Per-section transforms cannot be undone on a new section (its statistics are unknown), so
    predictions are put on the scale of the pooled training spots: ``z * scale + mean`` for
    standardised and rank targets, ``z + mean`` for centred ones. Correlations within a section
    do not change.
    """
    import torch

    from ...models import LinearHead

    if how == "log1p":
        return
    scale = np.where(scale > 0, scale, 1) if how in ("standardised", "rank") else np.ones_like(
        mean)
    s, m = (torch.as_tensor(v, dtype=torch.float32) for v in (scale, mean))
    with torch.no_grad():
        if isinstance(head, LinearHead):
            head.weight.mul_(s[None, :])
            head.bias.mul_(s).add_(m)
        else:
            for member in head.members:
                last = member[-1]
                last.weight.mul_(s[:, None])
                last.bias.mul_(s).add_(m)
