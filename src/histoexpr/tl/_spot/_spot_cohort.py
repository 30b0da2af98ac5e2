"""A spot model over a cohort of H&E-only slides on disk: one table of predictions per slide.

Each slide is one task of the cohort's per-slide runner (:func:`histoexpr._core.distributed.
run_slides`: one slide after the other, or on the workers of a dask client): open the slide
file lazily, run the single-slide :func:`~histoexpr.tl._spot._spot_predict.predict` on it
(tissue detection, a grid of tiles at the model's size and pixel size, features, the model, and
whatever that function adds to its table; for another model of kind ``"spot"``, its module's
one-section ``predict``), and write the table to the slide's store
(:meth:`histoexpr.io.SlideStore.write_prediction`, atomically) with how it was made. A slide
whose store holds that table, made by the same model from the same slide file with the same
options, is skipped. A slide that fails (its pixel data cannot be decoded, say) is reported
``"failed"``, with its error, as :func:`histoexpr.tl.embed_cohort` does: the others go on,
nothing of it is stored, and the next run tries it again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._core.distributed import check_client, close_slide_files, report_failures, run_slides
from ..._core.logs import logger, shown
from ..._core.memory import file_fingerprint
from ..._core.torch_files import model_fingerprint

if TYPE_CHECKING:
    from types import ModuleType

    import pandas as pd

    from ...io import Cohort
    from ...models import Network


def predict_cohort(
    model: Network,
    cohort: Cohort,
    *,
    tiles_key: str | None = None,
    image_key: str | None = None,
    stride_um: float | None = None,
    min_tissue: float = 0.5,
    batch_size: int = 64,
    device: str | None = None,
    key_added: str | None = None,
    overwrite: bool = False,
    client: Any = None,
    level: float | None = None,
    library_size: Any = "auto",
    module: ModuleType | None = None,
) -> pd.DataFrame:
    """Predict every slide of a cohort on disk into its store; see ``predict``'s docstring.

    Each slide is predicted by ``module.predict(model, sdata, *, tiles_key=..., key_added=...,
    ...)``, the one-section ``predict`` of the model's module (``None``: the spot regressor's),
    which returns the slide's table of predictions (an AnnData). The runner's other options
    go to it where it takes them; one it does not take must keep its default.
    """
    import pandas as pd

    from ..._core.validate import (
        check_element_name,
        check_fraction,
        check_positive,
        check_store_name,
    )
    from ...io import Cohort
    from ._spot_predict import check_options

    if not isinstance(cohort, Cohort) or not cohort.on_disk:
        raise TypeError(
            "Predicting a cohort needs a cohort on disk, whose slides have stores: "
            "read it from a manifest with hx.io.read_cohort(manifest). For slides "
            "in memory, call hx.tl.predict(model, sdata) on each."
        )
    metadata = getattr(model, "metadata", None) or {}
    if module is None and metadata.get("model") != "spot_regressor":
        raise ValueError(
            f"This is a {metadata.get('model')!r} model, not a spot regressor, and no module= "
            "names the one-section predict to run on each slide. Predict it with "
            "hx.tl.predict(model, cohort) (a model of kind 'spot' is run slide by slide with "
            "its module's predict), or train one with hx.tl.fit(..., model='spot_regressor')."
        )
    passed = _slide_options(
        module,
        {"stride_um": stride_um, "min_tissue": min_tissue, "batch_size": batch_size,
         "device": device, "level": level, "library_size": library_size},
    )
    check_client(client)
    image_key = cohort.image_key if image_key is None else image_key
    if image_key != cohort.image_key:
        raise ValueError(
            f"The cohort's slides are read as sdata.images[{cohort.image_key!r}], "
            f"not {image_key!r}; leave image_key=None (or read the cohort with "
            f"hx.io.read_cohort(..., image_key={image_key!r}))."
        )
    tiles_key = check_element_name("tiles_key", f"{image_key}_expr_tiles" if tiles_key is None
                                   else tiles_key)
    key_added = f"{tiles_key}_expression" if key_added is None else key_added
    check_store_name("key_added", check_element_name("key_added", key_added),
                     what="table of predictions in each slide's store")
    # every option is checked here, before the first slide is read
    resolved_level = check_options(metadata, level=level, batch_size=batch_size, device=device,
                                   library_size=library_size)
    check_fraction("min_tissue", min_tissue, closed="both")
    if stride_um is not None:
        check_positive("stride_um", stride_um, unit="um")
    if key_added in (tiles_key, f"{tiles_key}_table"):
        raise ValueError(
            f"key_added={key_added!r} names the tiles {tiles_key!r} (or their "
            "table); give the predictions another key_added."
        )
    missing = [str(cohort.path(i)) for i in cohort.ids if not cohort.path(i).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} slide files of the cohort no longer exist, e.g. "
            f"{missing[:3]}; restore them, or predict on the others with "
            "hx.tl.predict(model, cohort.subset([...]))."
        )
    options = {
        "image_key": image_key,
        "tiles_key": tiles_key,
        "stride_um": stride_um,
        "min_tissue": float(min_tissue),
        "key_added": key_added,
        "level": float(resolved_level),
    }
    if not (isinstance(library_size, str) and library_size == "auto"):  # the default: unrecorded,
        # so that predictions stored before the option existed are still found alike
        options["library_size"] = None if library_size is None else float(library_size)
    fingerprint = model_fingerprint(model)
    for slide_id in cohort.ids:  # no slide is predicted where one store would refuse its table
        cohort.store(slide_id).check_ours()
    _check_targets_ours(cohort, key_added)
    tasks, rows = [], {}
    for slide_id in cohort.ids:  # every slide's work is decided before anything is computed
        store, path = cohort.store(slide_id), cohort.path(slide_id)
        record = {
            "model": fingerprint,
            "slide": slide_file(path),
            "slide_mpp": cohort.slide_mpp(slide_id),
            **options,
        }
        if _planned(slide_id, store, record, tiles_key, key_added, overwrite) == "skipped":
            stored = store.prediction(key_added)
            rows[slide_id] = {
                "status": "skipped",
                "n_tiles": int(stored.n_obs),
                "seconds": 0.0,
                "worker": None,
                **guard_columns(stored),
                "error": None,
            }
            continue
        tasks.append(
            {
                "slide_id": slide_id,
                "path": str(path),
                "store": str(store.path),
                "mpp": cohort.slide_mpp(slide_id),
                "image_key": image_key,
                "record": record,
                # the function itself: a dask worker gets it by reference, or by value where
                # its module cannot be imported there (a notebook's or script's __main__)
                "predict": None if module is None else module.predict,
                "options": {
                    name: value
                    for name, value in {
                        "tiles_key": tiles_key,
                        "image_key": image_key,
                        "stride_um": stride_um,
                        "min_tissue": min_tissue,
                        "batch_size": batch_size,
                        "device": device,
                        "key_added": key_added,
                        "level": level,
                        "library_size": library_size,
                        "name": slide_id,
                    }.items()
                    if name in passed
                },
            }
        )
    _check_slides_open(tasks, model, image_key)
    logger.info(
        "predict: %d slides to predict, %d already done (%s, predictions %r).",
        len(tasks),
        len(rows),
        cohort.store_dir,
        key_added,
    )
    for summary in run_slides(tasks, _predict_slide, client=client, model=model):
        rows[summary.pop("slide_id")] = summary
    frame = pd.DataFrame.from_dict(rows, orient="index").reindex(cohort.ids)
    frame.index.name = "slide_id"
    report_failures(frame, len(tasks), "predict", stacklevel=5)
    return frame


#: the options of the spot regressor's one-section predict the runner passes on, and their
#: defaults: another model's predict need not take those left at their default
_RUNNER_DEFAULTS = {"stride_um": None, "min_tissue": 0.5, "batch_size": 64, "device": None,
                    "level": None, "library_size": "auto"}


def _slide_options(module: ModuleType | None, given: dict[str, Any]) -> set[str]:
    """The names of the options the runner passes to ``module.predict`` for each slide.

    All of them for the spot regressor (``module=None``) and for a ``predict`` taking
    ``**kwargs``; else those its signature names. It must take ``tiles_key`` and ``key_added``
    (the runner makes the slide's tiles and stores the table under that key), and an option set
    away from its default that it does not take is refused, before any slide is read.
    """
    import inspect

    everything = {"tiles_key", "image_key", "key_added", "name", *_RUNNER_DEFAULTS}
    if module is None:
        return everything
    function = getattr(module, "predict", None)
    if not callable(function):
        raise TypeError(f"Module {module.__name__!r} has no predict(model, sdata, *, "
                        "tiles_key=..., key_added=...) to run on each slide of the cohort.")
    parameters = inspect.signature(function).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return everything
    taken = everything & set(parameters)
    lacking = [name for name in ("tiles_key", "key_added") if name not in taken]
    if lacking:
        raise TypeError(
            f"{module.__name__}.predict takes no {' or '.join(lacking)}: predicting a cohort "
            "slide by slide needs a one-section predict(model, sdata, *, tiles_key=..., "
            "key_added=...) that returns the slide's table of predictions.")
    refused = [f"{name}={value!r}" for name, value in given.items()
               if name not in taken and value != _RUNNER_DEFAULTS[name]]
    if refused:
        raise TypeError(f"{module.__name__}.predict takes no {', '.join(refused)}; leave "
                        f"{'them' if len(refused) > 1 else 'it'} at the default.")
    return taken


def _check_slides_open(tasks: list[dict], model: Network, image_key: str) -> None:
    """Open every slide to predict (lazily: its header and metadata) before any is predicted.

    A file that is no slide, a slide without a pixel size (in its metadata or the manifest) or
    with other channels than the model's would otherwise stop the run after the slides before it
    were predicted and stored.
    """
    from ..._core.logs import each_item
    from ...io import read_wsi
    from ._spot_predict import _check_channels

    failed = {}
    for task in tasks:
        sdata = None
        try:
            with each_item():  # one slide's reading is debug chatter
                sdata = read_wsi(task["path"], mpp=task["mpp"], image_key=image_key)
                _check_channels(sdata, image_key, model)
        except (ValueError, OSError) as error:
            failed[task["slide_id"]] = str(error)
        finally:
            close_slide_files(sdata)
    if failed:
        listed = "; ".join(f"{i!r}: {e}" for i, e in list(failed.items())[:3])
        raise ValueError(
            f"{len(failed)} of the {len(tasks)} slides to predict cannot be predicted "
            f"({listed}). Fix or replace those files (a pixel size missing from a file goes "
            "in the manifest's mpp column), or predict the others with "
            "hx.tl.predict(model, cohort.subset([...])). Nothing was predicted."
        )


def _check_targets_ours(cohort: Cohort, key_added: str) -> None:
    """Refuse, before any slide is predicted, a target that is not histoexpr's predictions.

    That is: ``predictions/<key_added>`` of any store, where it is not a table of predictions
    histoexpr wrote (it has no record of how it was made).
    :meth:`~histoexpr.io.SlideStore.write_prediction` never replaces such a folder, even with
    ``overwrite=True``: found only there, it would stop the run after the slides before it were
    stored.
    """
    foreign = []
    for slide_id in cohort.ids:
        store = cohort.store(slide_id)
        target = store._prediction_path(key_added)
        if (target.exists() or target.is_symlink()) and key_added not in store.prediction_records():
            foreign.append((slide_id, target))
    if foreign:
        listed = shown([f"{slide_id!r}: {target}" for slide_id, target in foreign], 3, sep="; ")
        raise FileExistsError(
            f"The stores of {len(foreign)} slide(s) hold something at predictions/{key_added} "
            f"that is not a table of predictions written by histoexpr (it has no record of how "
            f"it was made) ({listed}), so it is not replaced, even with overwrite=True. "
            "Move it away, or choose another key_added (on the command line: another "
            "--store-dir). Nothing was predicted."
        )


def _planned(
    slide_id: str, store, record: dict, tiles_key: str, key_added: str, overwrite: bool
) -> str:
    """``"computed"`` or ``"skipped"``; a clash or a table made otherwise raises, unless asked."""
    if store.complete and tiles_key in store.tiles_keys():
        raise ValueError(
            f"The store of {slide_id!r} ({store.path}) holds tiles {tiles_key!r} "
            "of hx.tl.embed_cohort, and the prediction would make its own under "
            "that key; pass another tiles_key (e.g. the default, None)."
        )
    stored = store.prediction_records().get(key_added)
    if stored is None:
        return "computed"
    now = _plain(record)
    if stored == now:
        return "skipped"
    if not overwrite:
        changed = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
        raise ValueError(
            f"The store of {slide_id!r} ({store.path}) holds predictions {key_added!r} made "
            f"otherwise ({', '.join(changed)} differ: another model, a changed slide file or "
            "other options). Pass overwrite=True (--overwrite on the command line) to predict "
            "them anew, or, to keep both, another key_added (or another store_dir: --store-dir "
            "on the command line)."
        )
    # overwrite=True replaces the table only as histoexpr wrote it: a file added inside it is
    # refused here, before any slide is predicted
    store.check_prediction_replaceable(key_added)
    return "computed"


def _predict_slide(task: dict, model: Network) -> dict:
    """One slide: open it, predict with the single-slide ``predict``, store the table.

    A slide that fails is reported ``"failed"`` with its error (the others go on): its table
    is written atomically, so nothing of it is stored.
    """
    import socket

    from ..._core.image import CHUNKS
    from .._features._embed_cohort import _trim_memory

    start = time.perf_counter()
    try:
        table = _predict_and_write(task, model)
    except Exception as error:  # noqa: BLE001 - one bad slide does not stop the cohort
        reason = f"{type(error).__name__}: {error}"
        logger.error("%s failed (%s); going on with the other slides.", task["slide_id"], reason)
        return {"slide_id": task["slide_id"], "status": "failed", "n_tiles": 0,
                "seconds": time.perf_counter() - start, "worker": socket.gethostname(),
                "fraction_out_of_range": float("nan"), "warns": None, "error": reason}
    finally:
        CHUNKS.clear()
        _trim_memory()
    seconds = time.perf_counter() - start
    logger.info("%s: predicted %d tiles in %.1f s", task["slide_id"], table.n_obs, seconds)
    return {
        "slide_id": task["slide_id"],
        "status": "computed",
        "n_tiles": int(table.n_obs),
        "seconds": seconds,
        "worker": socket.gethostname(),
        **guard_columns(table),
        "error": None,
    }


def _predict_and_write(task: dict, model: Network):
    """The slide's table of predictions, written to its store; the slide file closed after."""
    from anndata import AnnData

    from ...io import SlideStore, read_wsi
    from . import _spot_predict

    store = SlideStore(task["store"])
    store.remove_partials()
    options = task["options"]
    predict = task.get("predict") or _spot_predict.predict
    sdata = read_wsi(task["path"], mpp=task["mpp"], image_key=options.get(
        "image_key", task["image_key"]))
    try:
        table = predict(model, sdata, **options)
        if not isinstance(table, AnnData):
            raise TypeError(f"{predict.__module__}.predict returned a {type(table).__name__}, not "
                            "the slide's table of predictions (an AnnData).")
        store.write_prediction(
            options["key_added"],
            table,
            record=task["record"],
            slide={"slide_id": task["slide_id"], "slide_path": task["path"]},
            overwrite=True,
        )
    finally:
        close_slide_files(sdata)
    return table


def guard_columns(table) -> dict[str, Any]:
    """The slide's guard summary as columns of the cohort's summary frame.

    ``fraction_out_of_range`` (share of the slide's tiles out of the training data's range) and
    ``warns`` (whether that share warned); NaN and ``None`` where the model has no guard.
    """
    guard = (table.uns.get("prediction") or {}).get("guard") or {}
    if not guard.get("available"):
        return {"fraction_out_of_range": float("nan"), "warns": None}
    return {"fraction_out_of_range": float(guard["fraction_out_of_range"]),
            "warns": bool(guard["warns"])}


def slide_file(path: str | Path) -> dict[str, Any]:
    """What identifies a slide file: its path and its content (size and digest)."""
    path = Path(path)
    return {"path": str(path.resolve()), "content": file_fingerprint(path)}


def _plain(value: Any) -> Any:
    """As stored (JSON round trip), so that recorded and current records compare equal."""
    return json.loads(json.dumps(value))
