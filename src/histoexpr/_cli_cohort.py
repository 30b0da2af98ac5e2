"""``histoexpr predict``: the models it loads (``--import``) and a manifest of slides.

A model file is loaded after the modules named by ``--import`` are imported: the user's own
code that registers a model written outside histoexpr (``hx.tl.register_model``) and its
network class (``hx.models.register_network``). ``--manifest`` predicts every slide of a
manifest with any model that predicts a cohort (its ``ModelSpec`` has ``cohort=True``, or
``kind="spot"``: slide by slide); a model whose tile features are made by an encoder named in
its metadata has them made first where the slides' stores lack them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._core.logs import logger, shown
from ._core.torch_files import untrained_message
from ._core.validate import check_bool, check_element_name


class CannotPredictError(Exception):
    """The model cannot be applied: its kind is unknown, or its predict refused the data."""


#: how a model from outside histoexpr reaches the command line, said where one is not known
IMPORT_HINT = ("A model from outside histoexpr is applied by importing the module of yours "
               "that registers it (hx.tl.register_model, and hx.models.register_network for "
               "its network class) when imported: --import MODULE, e.g. --import "
               "mypackage.models (installed, or its folder on PYTHONPATH).")


def import_modules(names: Sequence[str]) -> None:
    """Import the modules named by ``--import``, in order, by name (never a path).

    Each must be importable here (an installed package, or a folder on ``PYTHONPATH``); one
    that is not, or that fails while it is imported, is refused with a ``ValueError``.
    """
    import importlib

    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            path = Path(name)
            example = (f" (for {name}: PYTHONPATH={path.parent} ... --import {path.stem})"
                       if path.suffix == ".py" and path.stem.isidentifier() else "")
            raise ValueError(
                f"--import takes the name of a module (e.g. mypackage.models), not {name!r}: "
                "histoexpr imports your code by name, never from a path. Install its package, "
                f"or put the folder that holds it on PYTHONPATH, and give its name{example}.")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name is None or not (name == error.name
                                          or name.startswith(f"{error.name}.")):
                raise ValueError(f"--import {name}: importing it failed: {error}") from error
            raise ValueError(
                f"--import {name}: no module {name!r} can be imported here ({error}). Install "
                "the package that holds it, or put the folder that holds it on PYTHONPATH "
                f"(e.g. PYTHONPATH=/path/to/folder histoexpr predict --import {name} ...)."
            ) from error
        except Exception as error:  # the user's module failed: their error, named
            raise ValueError(f"--import {name}: importing it failed: "
                             f"{type(error).__name__}: {error}") from error
        logger.info("Imported %s (--import).", name)


def load_model_file(model_path: Path, *, device: str | None, root: Path | None,
                    imports: Sequence[str] = ()) -> tuple[Any, str]:
    """The model of a file and its name, after ``--import``; one not known here is refused.

    Raises :class:`CannotPredictError` for a network that no model trained, a network class
    or a model name unknown to this process (with how to import the code that registers them).
    """
    import histoexpr as hx

    import_modules(imports)
    try:
        model = hx.io.load_model(model_path, device=device, root=root)
    except ValueError as error:
        if "hx.models.register_network" not in str(error):
            raise
        raise CannotPredictError(f"{error} {_imported(imports)}{IMPORT_HINT}") from error
    name = (model.metadata or {}).get("model")
    if name is None:
        raise CannotPredictError(untrained_message(model, str(model_path)))
    try:
        hx.tl.predict_options(str(name))
    except ValueError as error:
        raise CannotPredictError(
            f"{model_path} holds a {name!r} model, which this histoexpr cannot apply ({error}) "
            f"{_imported(imports)}{IMPORT_HINT} Or it may come from another version of "
            "histoexpr.") from error
    return model, str(name)


def _imported(imports: Sequence[str]) -> str:
    if not imports:
        return ""
    return f"The modules given with --import ({', '.join(imports)}) do not register it. "


def run_predict_cohort(model_path: Path, manifest: Path, *, store_dir: Path | None = None,
                       batch_size: int = 64, device: str | None = None,
                       overwrite: bool = False, workers: int = 0, image_key: str | None = None,
                       root: Path | None = None, imports: Sequence[str] = ()):
    """Predict every slide of a manifest into its store with a model file.

    Any model that predicts a cohort: histoexpr's spot regressor and bag models (``abmil``,
    ``meanpool_ridge``, ``meanpool_logistic``), and the models registered with
    ``cohort=True`` or ``kind="spot"``. Returns one row per slide: its ``status`` (and, where
    the model's predict reports them, tiles, seconds and worker; a bag model's predicted
    values).
    """
    import histoexpr as hx

    from ._settings import _validate_device

    overwrite = check_bool("overwrite", overwrite)
    if workers < 0:
        raise ValueError(f"--workers must be 0 (here) or a number of processes, got {workers}.")
    if image_key is not None:  # before the model is loaded
        check_element_name("--image-key", image_key)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}.")
    if device is not None:
        _validate_device(device, "--device")
    for path, what in ((model_path, "model file"), (manifest, "manifest")):
        if not path.exists():
            raise FileNotFoundError(f"No {what} at {path}; check the path.")
    hx.settings.verbosity = 2
    model, name = load_model_file(model_path, device=device, root=root, imports=imports)
    cohort = hx.io.read_cohort(manifest, store_dir=store_dir,
                               image_key=image_key or model.metadata.get("image_key") or "he")
    accepted = hx.tl.predict_options(name)
    options = {"batch_size": batch_size, "device": device, "overwrite": overwrite}
    if not workers:
        made = _features_as_trained(cohort, model.metadata, batch_size=batch_size,
                                    device=device)
        result = _predict(model, name, model_path, cohort, options, accepted)
    else:
        from dask.distributed import Client, LocalCluster

        # any free port for the scheduler's HTTP server: another cluster on 8787 stops nothing
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            made = _features_as_trained(cohort, model.metadata, batch_size=batch_size,
                                        device=device, client=client)
            result = _predict(model, name, model_path, cohort, {**options, "client": client},
                              accepted)
    frame = status_table(result, cohort.ids, made)
    counts = frame["status"].value_counts().to_dict()
    logger.info("Predicted %d slides of %s into %s (%s).", len(frame), manifest,
                cohort.store_dir, ", ".join(f"{n} {s}" for s, n in counts.items()))
    print(frame.to_string())
    return frame


def _predict(model, name: str, model_path: Path, cohort, options: dict, accepted):
    """``hx.tl.predict`` over the cohort; a model that predicts no cohort named as such."""
    import histoexpr as hx

    taken = {k: v for k, v in options.items() if k in accepted}
    if "client" in options and "client" not in taken:
        logger.info("The %s model's predict takes no dask client: its slides are predicted "
                    "here, one after the other (--workers ran only the making of their tile "
                    "features, if any).", name)
    try:
        return hx.tl.predict(model, cohort, **taken)
    except ValueError as error:
        if "does not predict over a cohort" not in str(error):
            raise
        raise CannotPredictError(
            f"{model_path} holds a {name!r} model, which does not predict a manifest of "
            f"slides: {error} On the command line, predict each slide with --image.") from error


def _features_as_trained(cohort, metadata: dict, *, batch_size: int, device: str | None,
                         client: Any = None) -> dict[str, str]:
    """Make the tile features a model reads where the slides' stores lack them.

    For a model whose metadata records how its tile features were made (``features_made``:
    the bag models), the slides whose store has no features ``features_key`` of tiles
    ``tiles_key`` are tiled and embedded as in training (:func:`histoexpr.tl.embed_cohort`),
    when the encoder is one histoexpr makes by name (``"handcrafted"``, ``"squidpy"``...).
    Returns ``{slide_id: "made" or "found"}`` (empty for other models).
    """
    import histoexpr as hx

    made = metadata.get("features_made")
    tiles_key, features_key = metadata.get("tiles_key"), metadata.get("features_key")
    if not isinstance(made, dict) or not tiles_key or not features_key:
        return {}
    missing = [i for i in cohort.ids if not _has_features(cohort.store(i), tiles_key,
                                                          features_key)]
    found = {i: "found" for i in cohort.ids}
    if not missing:
        return found
    encoder, fingerprint = made.get("encoder"), made.get("fingerprint")
    if (not isinstance(encoder, str) or fingerprint != encoder or made.get("transform")
            or not made.get("size_px") or not made.get("mpp")):
        raise CannotPredictError(
            f"{len(missing)} slides' stores lack the tile features {features_key!r} (tiles "
            f"{tiles_key!r}) the model reads, e.g. {shown(missing, 3)}, and the command line "
            f"cannot make them: the model's were made by the encoder {encoder!r} (fingerprint "
            f"{fingerprint!r}{', with a tile transform' if made.get('transform') else ''}), "
            "not one histoexpr makes by name. Embed the slides first in Python, "
            f"hx.tl.embed_cohort(hx.io.read_cohort(manifest, store_dir={str(cohort.store_dir)!r}"
            f"), encoder=<the training encoder>, size_px={made.get('size_px')}, "
            f"mpp={made.get('mpp')}, tiles_key={tiles_key!r}, key_added={features_key!r}), "
            "then run this again.")
    logger.info("Tiling and embedding %d slides as the model was trained (%s, %s px at %s "
                "um/px).", len(missing), encoder, made["size_px"], made["mpp"])
    hx.tl.embed_cohort(cohort.subset(missing), encoder=encoder, size_px=int(made["size_px"]),
                       mpp=float(made["mpp"]), tiles_key=tiles_key, key_added=features_key,
                       batch_size=batch_size, device=device, client=client)
    return {**found, **dict.fromkeys(missing, "made")}


def _has_features(store, tiles_key: str, features_key: str) -> bool:
    return (store.exists and store.complete and tiles_key in store.tiles_keys()
            and features_key in store.feature_records(tiles_key))


def status_table(result: Any, ids: Sequence[str], made: dict[str, str]):
    """One row per slide: the cohort runner's summary, or the slide's predicted values.

    A spot model's predict returns its summary (``status``, tiles, seconds, worker); a bag
    model's its bags (one per slide) by outputs, shown with ``status`` ``"predicted"``; any
    other result, ``"predicted"`` for every slide.
    """
    import numpy as np
    import pandas as pd

    if isinstance(result, pd.DataFrame) and "status" in result:
        frame = result
    elif hasattr(result, "obs_names") and hasattr(result, "var_names"):
        values = result.X.toarray() if hasattr(result.X, "toarray") else np.asarray(result.X)
        frame = pd.DataFrame(values, index=pd.Index(result.obs_names, name="slide_id"),
                             columns=[str(c) for c in result.var_names])
        extra = [c for c in result.obs.columns if c == "n_tiles" or str(c).endswith("_pred")]
        for column in reversed(extra):
            frame.insert(0, column, result.obs[column].to_numpy())
        frame.insert(0, "status", "predicted")
    else:
        frame = pd.DataFrame({"status": "predicted"}, index=pd.Index(list(ids), name="slide_id"))
    if made:
        frame.insert(1, "features", [made.get(str(i), "") for i in frame.index])
    return frame
