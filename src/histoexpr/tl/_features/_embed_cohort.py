"""The per-slide pipeline of a cohort on disk: tissue -> tiles -> features, resumable and parallel.

Each slide is one task: open the slide file lazily, detect its tissue, tile it, embed the tiles
and write everything to the slide's store in one atomic step (:class:`histoexpr.io.SlideStore`).
Tasks run one after the other, or on the workers of a ``dask.distributed`` Client (``client.map``
over slides; dask schedules them, histoexpr has no scheduler of its own): the runner is
:func:`histoexpr._core.distributed.run_slides`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..._core.distributed import check_client, close_slide_files, report_failures, run_slides
from ..._core.logs import each_item, logged_step, logger
from ..._core.memory import file_fingerprint
from ..._core.records import EmbeddingRecord, TileRecord, WriterRecord
from ..._core.seeds import resolve_device, resolve_seed
from ..._core.validate import (
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_positive,
    check_store_name,
    renamed_parameters,
    stride_name,
)

if TYPE_CHECKING:
    import pandas as pd

    from ...io import Cohort
    from ...models import Network

#: what a slide's task did
STATUSES = ("computed", "features", "skipped", "failed")
#: the parameters embed_cohort records with the features it makes (their record's ``params``)
FEATURE_PARAMS = ("encoder", "checkpoint", "seed", "key")


@renamed_parameters(size="size_px", stride=stride_name)
@logged_step("embedding the slides of a cohort")
def embed_cohort(
    cohort: Cohort,
    *,
    encoder: str | Path | Network | Sequence[str | Path | Network] = "handcrafted",
    checkpoint: str | Path | None = None,
    size_px: int | None = None,
    mpp: float | None = None,
    size_um: float | None = None,
    stride_px: float | None = None,
    stride_um: float | None = None,
    min_tissue: float = 0.5,
    tissue_mpp: float = 8.0,
    tissue_kind: Literal["auto", "brightfield", "fluorescence"] = "auto",
    min_area_um2: float = 5_000.0,
    batch_size: int | None = None,
    device: str | None = None,
    seed: int | None = None,
    client: Any = None,
    tiles_key: str | None = None,
    key_added: str | None = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Detect tissue, tile and embed every slide of a cohort on disk, one slide at a time.

    For each slide: :func:`histoexpr.pp.detect_tissue`, :func:`histoexpr.pp.tile` and
    :func:`histoexpr.tl.embed`, on the slide file read lazily, then the tissue map, the tiles
    and their features are written to the slide's store in one atomic step. So:

    - **resumable**: a slide whose store is complete, made with the same parameters (recorded
      in the store and checked), is skipped; a store that holds the tiles but not these
      features only gets the features; a run killed mid-cohort loses at most the slides in
      flight (their temporary folders are cleaned up by the next run);
    - **bounded memory**: a task holds one slide's tissue map, tile geometry and features, and
      reads the tiles in batches (through a cache of decoded chunks of at most 128 MiB, emptied
      after every slide), so that a worker's memory stays close to flat in the number and the
      size of the slides (``benchmarks/README.md``: 24 slides of 20,000 px, 1.14x the peak of
      one);
    - **parallel** with a ``dask.distributed`` ``client``: slides are mapped over its workers
      (``client.map``), each worker running as many slides at once as it has threads. Give
      workers one thread each (``LocalCluster(n_workers=4, threads_per_worker=1)``) to bound
      the memory per worker to one slide.

    Parameters
    ----------
    cohort
        A cohort on disk, from :func:`histoexpr.io.read_cohort`.
    encoder
        The tile encoder, as for :func:`histoexpr.tl.embed` (``"handcrafted"``, an architecture
        name, a model file, a network, ``"timm:<name>"`` or a list of them). An architecture
        without ``checkpoint`` has random weights, drawn from ``seed`` so every slide (and every
        run) gets the same ones. An ``"hf:<folder>"`` is recorded by a digest of its files
        (configuration and weights), so features made before new weights were saved into the
        folder are not reused: refused without ``overwrite``, recomputed with it.
    checkpoint
        Local weights for an architecture name (as for :func:`histoexpr.tl.embed`).
    size_px
        Tile width in pixels at ``mpp`` (as for :func:`histoexpr.pp.tile`; 224 unless
        ``size_um``). (Was ``size``, still accepted with a ``FutureWarning``.)
    mpp
        Pixel size of the tiles in um/px; defaults to the slide's full resolution.
    size_um
        Tile width in micrometres, instead of ``size_px``.
    stride_px
        Distance between grid tiles in pixels at ``mpp``; give it or ``stride_um``, not both.
        Both default to the tile size. (The old ``stride``, in the unit of the size, is still
        accepted with a ``FutureWarning``.)
    stride_um
        Distance between grid tiles in micrometres.
    min_tissue
        Smallest share of a tile on tissue for it to be kept.
    tissue_mpp
        Pixel size at which tissue is detected (:func:`histoexpr.pp.detect_tissue`'s ``mpp``).
    tissue_kind
        ``"auto"``, ``"brightfield"`` or ``"fluorescence"`` (as for ``detect_tissue``).
    min_area_um2
        Pieces of tissue smaller than this are debris.
    batch_size
        Tiles per forward pass; ``None`` chooses, on each worker's device, as
        :func:`histoexpr.tl.embed` does (64 on a CPU; from the free memory on a CUDA GPU).
    device
        Torch device of the encoder; ``None`` uses ``hx.settings.device`` (on each worker).
    seed
        Seed of a randomly initialised encoder; ``None`` uses ``hx.settings.seed``.
    client
        A ``dask.distributed.Client`` (a ``LocalCluster``, or any cluster, e.g. through
        dask-jobqueue) to run the slides on; ``None`` runs them here, one after the other.
    tiles_key
        Key of the tiles; defaults to ``f"{cohort.image_key}_tiles"``.
    key_added
        Key of the features; defaults to ``f"X_{name}"`` with the encoder's name.
    overwrite
        Recompute slides (or features) whose store was made with other parameters. Without
        it, such a difference is an error, raised before anything is computed. It replaces
        only what embed_cohort wrote: a store to recompute (its tissue map and tiles anew)
        that holds what another step or the user wrote there (results of
        :func:`histoexpr.tl.fit`, ``predict`` or ``cross_validate``, another tile set,
        features embed_cohort did not make) is refused, naming them, before any slide is
        written. Features of other keys that embed_cohort made from the old tiles go with
        them (a warning names them); tables of predictions are kept.

    Returns
    -------
    One row per slide (index: slide id) with ``status`` (``"computed"``: tissue, tiles and
    features; ``"features"``: features added to stored tiles; ``"skipped"``: already done;
    ``"failed"``: the slide could not be processed and the others went on), ``n_tiles``,
    ``seconds`` (the slide's wall time), ``worker`` and ``error`` (why a slide failed: a
    warning lists them, and the next run tries them again). A slide file that is not the one
    its store was made from (by content, not size) is refused without ``overwrite``. The
    results are in the
    stores: open a slide with ``cohort[slide_id]``, or train on the cohort with
    :func:`histoexpr.tl.fit` / :func:`histoexpr.tl.cross_validate`.

    Examples
    --------
    >>> import histoexpr as hx
    >>> cohort = hx.io.read_cohort("slides.csv", bulk="bulk.h5ad")  # doctest: +SKIP
    >>> hx.tl.embed_cohort(cohort, encoder="handcrafted", size_um=64, mpp=2.0)  # doctest: +SKIP

    On a cluster (here a local one), slides run on the workers::

        from dask.distributed import Client, LocalCluster
        client = Client(LocalCluster(n_workers=4, threads_per_worker=1))
        hx.tl.embed_cohort(cohort, encoder="handcrafted", client=client)

    """
    check_bool("overwrite", overwrite)
    import pandas as pd

    from ...io import Cohort

    if not isinstance(cohort, Cohort) or not cohort.on_disk:
        raise TypeError("embed_cohort needs a cohort on disk: read it from a manifest with "
                        "hx.io.read_cohort(manifest, ...). For slides in memory, run "
                        "hx.pp.tile and hx.tl.embed on each.")
    # every option is checked here, before any slide is planned or opened: a bad one would
    # otherwise fail in each slide's task, one after the other
    if batch_size is not None:
        check_int("batch_size", batch_size, minimum=1)
    min_tissue = check_fraction("min_tissue", min_tissue, closed="both")
    check_positive("tissue_mpp", tissue_mpp, unit="um/px")
    check_choice("tissue_kind", tissue_kind, ("auto", "brightfield", "fluorescence"))
    check_positive("min_area_um2", min_area_um2, allow_zero=True, unit="um2")
    if size_px is not None and size_um is not None:
        raise ValueError("Give the tile size either in pixels (size_px) or in um (size_um), not "
                         "both.")
    if stride_px is not None and stride_um is not None:
        raise ValueError("Give the stride either in pixels (stride_px) or in um (stride_um), not "
                         "both.")
    if size_px is not None:
        check_int("size_px", size_px, minimum=1)
    for name, value, unit in (("size_um", size_um, "um"), ("mpp", mpp, "um/px"),
                              ("stride_px", stride_px, "pixels"), ("stride_um", stride_um, "um")):
        if value is not None:
            check_positive(name, value, unit=unit)
    if seed is not None:
        check_int("seed", seed)
    check_client(client)
    if client is None:  # on dask workers, each worker's own devices decide
        resolve_device(device)
    from ._embed import check_encoder

    encoders = list(encoder) if isinstance(encoder, list | tuple) else [encoder]
    check_encoder(encoders, checkpoint=checkpoint)  # a model file is loaded once here
    image_key = cohort.image_key
    tiles_key = f"{image_key}_tiles" if tiles_key is None else tiles_key
    name = "+".join(_encoder_name(one) for one in encoders)
    key_added = f"X_{name}" if key_added is None else key_added
    tissue_key = f"{image_key}_tissue"
    # every key becomes a folder in each slide's store: checked before anything is done
    check_store_name("tiles_key", tiles_key, what="tile set in a slide store")
    check_store_name("key_added", key_added, what="set of features in a slide store")
    check_store_name("image_key", tissue_key, what="tissue map in a slide store")
    seed = resolve_seed(seed)
    tile_params = {
        "image_key": image_key, "tissue_key": tissue_key, "tiles_key": tiles_key,
        "tissue": {"mpp": float(tissue_mpp), "kind": tissue_kind,
                   "min_area_um2": float(min_area_um2)},
        "tiles": _tile_record(size_px, mpp, size_um, stride_px, stride_um, min_tissue),
    }
    # its keys are FEATURE_PARAMS: how a store tells the features embed_cohort made
    feature_params = {"encoder": [_encoder_description(one) for one in encoders],
                      "checkpoint": None if checkpoint is None else _fingerprint(checkpoint),
                      "seed": seed, "key": key_added}

    if mpp is None and size_um is None:
        _check_one_pixel_size(cohort, size_px)
    # decide every slide's work before computing anything, so a conflict stops the run at once
    tasks, statuses = [], {}
    for slide_id in cohort.ids:
        store = cohort.store(slide_id)
        store.check_ours()
        path = cohort.path(slide_id)
        params = {**tile_params, "slide_mpp": cohort.slide_mpp(slide_id),
                  "slide_content": file_fingerprint(path)}
        status = _plan(slide_id, store, params, feature_params, tiles_key, key_added, overwrite)
        statuses[slide_id] = status
        if status == "computed":  # a rewrite never loses what another step (or the user) wrote
            _drops(store, tissue_key, tiles_key, key_added)  # refused here, before any write
        elif status == "features":  # the features node is made or replaced: histoexpr's only
            _check_features_node(slide_id, store, tiles_key, key_added)
        if status != "skipped":
            tasks.append({"slide_id": slide_id, "path": str(path), "store": str(store.path),
                          "mpp": cohort.slide_mpp(slide_id), "status": status,
                          "params": params, "feature_params": feature_params,
                          "tile_options": {"size_px": size_px, "mpp": mpp,
                                           "size_um": size_um, "stride_px": stride_px,
                                           "stride_um": stride_um, "min_tissue": min_tissue},
                          "batch_size": batch_size, "device": device, "checkpoint": checkpoint})
    n_skip = sum(s == "skipped" for s in statuses.values())
    logger.info("embed_cohort: %d slides to process, %d already done (%s, features %r).",
                len(tasks), n_skip, cohort.store_dir, key_added)
    rows = {i: {"status": "skipped", "n_tiles": cohort.store(i).n_tiles(tiles_key),
                "seconds": 0.0, "worker": None, "error": None}
            for i, s in statuses.items() if s == "skipped"}
    if tasks:
        for summary in run_slides(tasks, _run_slide, client=client, encoders=encoders):
            rows[summary.pop("slide_id")] = summary
    frame = pd.DataFrame.from_dict(rows, orient="index").reindex(cohort.ids)
    frame.index.name = "slide_id"
    if "error" not in frame.columns:
        frame["error"] = None
    report_failures(frame, len(tasks), "embed_cohort", stacklevel=4)
    return frame


def _check_one_pixel_size(cohort: Cohort, size_px: int | None) -> None:
    """Refuse tiles of one size in pixels on slides of different pixel sizes (no ``mpp``)."""
    from ..._core.image import get_pixel_size
    from ...io import read_wsi

    sizes: dict[float, list[str]] = {}
    for slide_id in cohort.ids:
        try:
            with each_item():  # one slide's reading is debug chatter
                sdata = read_wsi(cohort.path(slide_id), mpp=cohort.slide_mpp(slide_id),
                                 image_key=cohort.image_key)
        except Exception:  # noqa: BLE001 - the slide's own task records why it cannot be read
            continue
        value = round(get_pixel_size(sdata, cohort.image_key), 4)
        close_slide_files(sdata)
        close = next((known for known in sizes if abs(known - value) <= 0.01 * known), value)
        sizes.setdefault(close, []).append(slide_id)
    if len(sizes) > 1:
        side = 224 if size_px is None else size_px
        found = ", ".join(f"{mpp:g} um/px ({len(ids)} slides, e.g. {ids[0]!r})"
                          for mpp, ids in sorted(sizes.items()))
        widths = sorted(side * mpp for mpp in sizes)
        raise ValueError(
            f"The slides have different pixel sizes ({found}): tiles of {side} px at each "
            f"slide's own resolution would cover {widths[0]:g} um on some and {widths[-1]:g} um "
            "on others under one features key. Pass mpp= (every tile resampled to that pixel "
            f"size, e.g. mpp={max(sizes):g}) or size_um= with mpp=.")


def _tile_record(size_px, mpp, size_um, stride_px, stride_um, min_tissue) -> dict:
    """The tile options as a store records them: a :class:`TileRecord` of the options as given.

    ``None`` is an option's default; ``stride_px`` (no field of a record of tiles made) is kept
    among its extra keys. Compared with ``TileRecord.differences(..., exact=True)``.
    """
    return TileRecord(size_px=size_px, mpp=mpp, size_um=size_um, stride_um=stride_um,
                      min_tissue=float(min_tissue), extra={"stride_px": stride_px}).to_uns()


def _as_current(params: dict) -> dict:
    """A store's recorded parameters with the tile options under today's names.

    Stores written before the renames recorded ``size`` and ``stride`` (the stride in the unit
    of the size): read as ``size_px`` and ``stride_px`` or ``stride_um``, so those stores are
    still recognised (and skipped when made the same way).
    """
    tiles = params.get("tiles")
    if not isinstance(tiles, dict) or ("size" not in tiles and "stride" not in tiles):
        return params
    tiles = dict(tiles)
    size_px, stride = tiles.pop("size", None), tiles.pop("stride", None)
    new = {"size_px": size_px, "mpp": tiles.get("mpp"), "size_um": tiles.get("size_um"),
           "stride_px": None if tiles.get("size_um") is not None else stride}
    new.update({k: v for k, v in tiles.items() if k not in new})
    if stride is not None and tiles.get("size_um") is not None:
        new["stride_um"] = stride
    return {**params, "tiles": new}


def _plan(slide_id: str, store, params: dict, feature_params: dict, tiles_key: str,
          key: str, overwrite: bool) -> str:
    """``"computed"``, ``"features"`` or ``"skipped"``; raises on a conflict without overwrite."""
    if not store.exists:
        return "computed"
    if not store.complete:
        logger.info("The store of %s is unfinished (an interrupted run?); computing it anew.",
                    slide_id)
        return "computed"
    stored = _as_current(store.params)
    if stored.get("slide_content") != _plain(params["slide_content"]):
        if not overwrite:
            was = ("records only the file's size, which cannot tell one slide from another of "
                   "the same size" if "slide_content" not in stored else
                   f"was made from other content ({stored['slide_content']})")
            raise ValueError(
                f"The slide file of {slide_id!r} is not the one its store ({store.path}) was "
                f"made from, as far as histoexpr can tell: the store {was}; the file now is "
                f"{params['slide_content']}. Its stored results would not be this slide's: pass "
                "overwrite=True to recompute it, or read the cohort with another store_dir.")
        return "computed"
    changed = _changed(stored, _plain(params))
    if changed:
        if not overwrite:
            raise ValueError(
                f"The store of {slide_id!r} ({store.path}) was made with other parameters than "
                f"those asked now ({'; '.join(changed)}). Pass overwrite=True to recompute it, "
                "or read the cohort with another store_dir.")
        return "computed"
    if tiles_key not in store.tiles_keys():
        return "computed" if overwrite else _conflict(slide_id, store, f"no tiles {tiles_key!r}")
    record = store.feature_records(tiles_key).get(key)
    if record is None:
        return "features"
    made = EmbeddingRecord.from_uns(record).differences(
        EmbeddingRecord(params=_plain(feature_params)), fields={"params"})
    if made:
        if not overwrite:
            raise ValueError(
                f"The features {key!r} of {slide_id!r} were made otherwise than asked now "
                f"({'; '.join(made)}). Pass overwrite=True to recompute them, or another "
                "key_added.")
        return "features"
    return "skipped"


def _check_features_node(slide_id: str, store, tiles_key: str, key: str) -> None:
    """Refuse, while planning, features ``key`` that would land on what is not embed_cohort's.

    The opened slide's tile table gets the results of a slide-level model under ``key`` and
    ``f"{key}_attention"`` (``obsm``): features under one of those names would be hidden by
    them, or hide them. And the folder of the features must be one histoexpr wrote and hold
    nothing else (:meth:`~histoexpr.io.SlideStore.check_node`): never a folder of the user's.
    """
    taken = [name for name in store.results_keys(tiles_key) if key in (name, f"{name}_attention")]
    if taken:
        writer = store.results_writer(tiles_key, taken[0])
        raise KeyError(
            f"The store of {slide_id!r} ({store.path}) holds the per-tile results {taken[0]!r} "
            f"of a slide-level model (written by {writer.step if writer else 'hx.tl.predict'}): "
            f"features under key_added={key!r} would share the opened slide's tile table entry "
            f"obsm[{key!r}] with them. Nothing was written; choose another key_added.")
    store.check_node(store.path / "tiles" / tiles_key / "features" / key,
                     what=f"The features {key!r}",
                     fix="Move them out of the store, or choose another key_added.")


def _drops(store, tissue_key: str, tiles_key: str, key_added: str) -> list[str]:
    """Check that recomputing a slide's store loses nothing but embed_cohort's own.

    The tissue map, the tiles ``tiles_key`` and the features ``key_added`` are written anew.
    Features of other keys of ``tiles_key`` no longer fit the new tiles: they may go where
    their record shows embed_cohort made them (its parameters under their own key, written by
    ``hx.tl.embed``, or with no writer by an earlier version). Anything else the store holds
    (other tile sets, results of other steps, features of unknown origin) makes
    :meth:`~histoexpr.io.SlideStore.check_rewritable` raise, naming it. Returns the keys of
    the features the rewrite drops.
    """
    return store.check_rewritable(tissue_key=tissue_key, tiles_key=tiles_key,
                                  feature_keys=[key_added], drop_features=_droppable(store,
                                                                                     tiles_key))


def _droppable(store, tiles_key: str) -> list[str]:
    """The features of ``tiles_key`` whose record shows embed_cohort made them (see _drops)."""
    from ._embed import STEP

    stored = (store.feature_records(tiles_key)
              if store.complete and tiles_key in store.tiles_keys() else {})
    return [key for key, record in stored.items()
            if isinstance(made := record.get("params"), dict)
            and made.get("key") == key and set(made) == set(FEATURE_PARAMS)
            and EmbeddingRecord.from_uns(record).writer in (None, WriterRecord(STEP, key))]


def _changed(stored: dict, params: dict) -> list[str]:
    """How a store's parameters differ from ``params``, one text per parameter, naming it.

    The tile options are compared as tile records (every option, exactly: ``exact=True``); the
    others (keys, tissue detection, the slide's pixel size) as they are recorded.
    """
    changed = [f"{name}: {stored.get(name)!r}, not {params.get(name)!r}"
               for name in sorted(set(stored) | set(params))
               if name != "tiles" and stored.get(name) != params.get(name)]
    tiles = TileRecord.from_uns(stored.get("tiles") or {}).differences(
        TileRecord.from_uns(params["tiles"]), exact=True)
    return changed + [f"tile option {difference}" for difference in tiles]


def _conflict(slide_id: str, store, what: str) -> str:
    raise ValueError(f"The store of {slide_id!r} ({store.path}) has {what}; pass overwrite=True "
                     "to recompute the slide.")


def _run_slide(task: dict, encoders: list) -> dict:
    """One slide: tissue, tiles and features (or only features), written to its store.

    The process-wide cache of decoded image chunks (``histoexpr._core.image.CHUNKS``, at most 128
    MiB) is emptied after the slide: its chunks are keyed by the slide's dask arrays, which no later
    slide reads. Kept, they filled the budget over ~10 slides (~12 MB a slide), so that a
    worker's memory grew with the number of slides it had run until the budget was reached. (A
    worker running several slides at once on several threads then reads the other slides'
    chunks again: give workers one thread each, as the docs say.) Then the memory the slide
    freed is handed back to the operating system (:func:`_trim_memory`).
    """
    import socket

    from ..._core.image import CHUNKS

    start = time.perf_counter()
    try:
        return _process_slide(task, encoders)
    except Exception as error:  # noqa: BLE001 - one bad slide does not stop the cohort
        reason = f"{type(error).__name__}: {error}"
        logger.error("%s failed (%s); going on with the other slides.", task["slide_id"], reason)
        return {"slide_id": task["slide_id"], "status": "failed", "n_tiles": 0,
                "seconds": time.perf_counter() - start, "worker": socket.gethostname(),
                "error": reason}
    finally:
        CHUNKS.clear()
        _trim_memory()


def _trim_memory() -> None:
    """Return freed heap memory to the operating system (glibc's ``malloc_trim``).

    A slide's arrays are freed when it is done, but glibc keeps the freed pages in its heaps,
    and they fragment: without trimming, a process's resident memory rose by ~3 MB a slide (in
    steps) although nothing was kept; with it, by ~0.3 MB. This is the remedy dask's
    documentation gives for worker memory "not released back to the OS". Elsewhere than Linux
    with glibc, nothing is done.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
        pass


def _process_slide(task: dict, encoders: list) -> dict:
    import socket

    from ...io import SlideStore, read_wsi

    start = time.perf_counter()
    store = SlideStore(task["store"])
    store.remove_partials()
    sdata = read_wsi(task["path"], mpp=task["mpp"], image_key=task["params"]["image_key"])
    try:  # the slide file is closed when the slide is done, or has failed
        n_tiles = _embed_and_write(sdata, task, encoders, store)
    finally:
        close_slide_files(sdata)
    seconds = time.perf_counter() - start
    logger.info("%s: %s, %d tiles in %.1f s", task["slide_id"], task["status"], n_tiles, seconds)
    return {"slide_id": task["slide_id"], "status": task["status"], "n_tiles": n_tiles,
            "seconds": seconds, "worker": socket.gethostname(), "error": None}


def _embed_and_write(sdata, task: dict, encoders: list, store) -> int:
    """A slide's tissue and tiles (or its stored tiles) and features, written to its store.

    Returns the number of tiles.
    """
    from ..._core.seeds import seed_everything
    from ...pp import detect_tissue, tile
    from ._embed import embed

    params, key = task["params"], task["feature_params"]["key"]
    image_key, tiles_key = params["image_key"], params["tiles_key"]
    if task["status"] == "computed":
        tissue = params["tissue"]
        detect_tissue(sdata, image_key, mpp=tissue["mpp"], kind=tissue["kind"],
                      min_area_um2=tissue["min_area_um2"], key_added=params["tissue_key"])
        tile(sdata, image_key, tissue_key=params["tissue_key"], key_added=tiles_key,
             **task["tile_options"])
    else:
        store.add_to(sdata, tiles_key=tiles_key)
    seed_everything(task["feature_params"]["seed"])  # the same random encoder on every slide
    encoder = encoders if len(encoders) > 1 else encoders[0]
    embed(sdata, tiles_key, encoder=encoder, checkpoint=task["checkpoint"],
          batch_size=task["batch_size"], device=resolve_device(task["device"]), key_added=key,
          overwrite=True)
    table = sdata.tables[f"{tiles_key}_table"]
    record = replace(EmbeddingRecord.from_uns(table.uns["embeddings"][key]),
                     params=task["feature_params"], created=time.time()).to_uns()
    table.uns["embeddings"][key] = record
    if task["status"] == "computed":
        slide = {"slide_id": task["slide_id"], "slide_path": task["path"],
                 "processed": time.time()}
        store.write_slide(sdata, tissue_key=params["tissue_key"], tiles_key=tiles_key,
                          slide=slide, params=params, feature_keys=[key],
                          drop_features=_droppable(store, tiles_key))  # it checks them
    else:
        store.write_features(tiles_key, key, table.obsm[key], record)
    return int(table.n_obs)


def _encoder_name(encoder: Any) -> str:
    """The short name :func:`histoexpr.tl.embed` gives an encoder (features ``X_<name>``)."""
    from ...models import Network

    if isinstance(encoder, Network):
        return type(encoder).__name__.lower()
    if isinstance(encoder, Path) or (isinstance(encoder, str) and encoder.endswith(".pt")):
        return Path(encoder).stem
    if isinstance(encoder, str) and encoder.startswith("timm:"):
        return encoder.removeprefix("timm:").replace("/", "_")
    if isinstance(encoder, str):
        return encoder.split(":")[0]
    raise TypeError(f"encoder must be a name, a model file or a network, got "
                    f"{type(encoder).__name__}.")


def _encoder_description(encoder: Any) -> Any:
    """What identifies an encoder's weights: its name, its file's hash or its weights' hash.

    An ``"hf:<folder>"`` is identified by a digest of its files
    (:func:`histoexpr.tl._features._embed.hf_folder_fingerprint`).
    """
    from ...models import Network

    if isinstance(encoder, Network):  # its class, configuration and weights
        from ._embed import network_digest

        return {"network": type(encoder).__name__, "sha256": network_digest(encoder)}
    if isinstance(encoder, Path) or (isinstance(encoder, str) and encoder.endswith(".pt")):
        return _fingerprint(encoder)
    from ._embed import hf_folder, hf_folder_fingerprint

    folder = hf_folder(encoder)
    if folder is not None:  # by its content, not its path: new weights are another encoder
        return {"hf_folder": folder.name, "content": hf_folder_fingerprint(folder)}
    return str(encoder)


def _fingerprint(path: str | Path) -> dict:
    """A weights file: its name and the hash of its content."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No weights file at {path}.")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"file": path.name, "sha256": digest.hexdigest()}


def _plain(value: Any) -> Any:
    """As stored (JSON round trip), so that recorded and current parameters compare equal."""
    import json

    return json.loads(json.dumps(value))
