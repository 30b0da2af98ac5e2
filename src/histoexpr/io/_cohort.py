"""A cohort of slides: one SpatialData per slide and one table of bulk expression.

Slides live in memory (a mapping of SpatialData) or on disk (:func:`read_cohort`: a manifest of
slide files, each slide opened lazily when asked for, its results in its own store).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._core.files import restore_swap_of
from .._core.logs import logger
from .._core.validate import check_element_name, check_store_name
from ._slide_store import SlideStore

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

#: manifest columns with a meaning of their own (every other column is a slide label)
MANIFEST_COLUMNS = ("path", "slide_id", "patient", "mpp")
#: manifest columns of names, read as text whatever they look like ("001" stays "001")
_ID_COLUMNS = ("path", "slide_id", "patient")


class Cohort(Mapping):
    """Slides and their slide-level (bulk) data, kept in step.

    A read-only mapping from slide id to :class:`spatialdata.SpatialData`, in the order of
    ``bulk.obs_names``, together with ``bulk``: slides x genes bulk expression whose ``obs`` holds
    the slide-level labels.

    A cohort read from a manifest with :func:`histoexpr.io.read_cohort` lives on disk
    (``on_disk``): ``cohort[slide_id]`` opens the slide file lazily, with the results kept in its
    store (:meth:`store`), each time it is asked for, so only the slides in use are in memory.
    Results are written to the stores by the functions that make them
    (:func:`histoexpr.tl.embed_cohort`, :func:`histoexpr.tl.predict`); changes made by hand to
    an opened slide are not saved.

    Parameters
    ----------
    slides
        The sections, keyed by slide id.
    bulk
        One row per slide; its ``obs_names`` must be exactly the slide ids (any order).

    Examples
    --------
    >>> import histoexpr as hx
    >>> cohort = hx.datasets.synthetic_cohort(4, seed=0)
    >>> for slide_id, sdata in cohort.items():
    ...     label = cohort.bulk.obs.loc[slide_id, "diagnosis"]

    """

    def __init__(self, slides: Mapping[str, SpatialData], bulk: AnnData) -> None:
        from anndata import AnnData

        if not isinstance(bulk, AnnData):
            raise TypeError(
                f"bulk must be an AnnData (slides x genes), got {type(bulk).__name__}."
            )
        if not isinstance(slides, Mapping):
            raise TypeError(
                "slides must be a mapping from slide id to SpatialData, "
                f"got {type(slides).__name__}."
            )
        ids = list(bulk.obs_names)
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(
                f"bulk.obs_names has duplicated slide ids {duplicated}; make them unique."
            )
        no_slide = [i for i in ids if i not in slides]
        no_bulk = [i for i in slides if i not in set(ids)]
        if no_slide or no_bulk:
            parts = []
            if no_slide:
                parts.append(f"bulk rows without a slide: {_preview(no_slide)}")
            if no_bulk:
                parts.append(f"slides without a bulk row: {_preview(no_bulk)}")
            raise ValueError(
                "The slide ids of `slides` and `bulk.obs_names` must match exactly; "
                + "; ".join(parts) + ". Subset both to the same ids."
            )
        self._slides = slides.subset(ids) if isinstance(slides, _StoredSlides) else \
            {i: slides[i] for i in ids}
        self._bulk = bulk

    @property
    def slides(self) -> Mapping[str, SpatialData]:
        """The sections, keyed by slide id, in the order of ``bulk.obs_names``.

        A dict for a cohort in memory; for one on disk, a mapping that opens each slide when
        asked for.
        """
        return self._slides if self.on_disk else dict(self._slides)

    @property
    def on_disk(self) -> bool:
        """Whether the slides are files opened lazily, with their results in stores."""
        return isinstance(self._slides, _StoredSlides)

    @property
    def store_dir(self) -> Path:
        """The folder of the slides' stores (a cohort on disk)."""
        return self._stored().store_dir

    @property
    def image_key(self) -> str:
        """Key of the slides' image (a cohort on disk)."""
        return self._stored().image_key

    def store(self, slide_id: str) -> SlideStore:
        """The store of one slide's results (a cohort on disk).

        Parameters
        ----------
        slide_id
            The slide.

        Returns
        -------
        Its :class:`histoexpr.io.SlideStore`.

        """
        self._require(slide_id)
        return self._stored().store(slide_id)

    def path(self, slide_id: str) -> Path:
        """The file of one slide (a cohort on disk).

        Parameters
        ----------
        slide_id
            The slide.

        Returns
        -------
        The slide file's path.

        """
        self._require(slide_id)
        return self._stored().paths[slide_id]

    def slide_mpp(self, slide_id: str) -> float | None:
        """The pixel size given for a slide in the manifest.

        Parameters
        ----------
        slide_id
            The slide.

        Returns
        -------
        Its pixel size in um/px, or ``None`` where the manifest gives none (read from the file).

        """
        return self._stored().mpps.get(slide_id)

    def _require(self, slide_id: str) -> None:
        if slide_id not in self._slides:
            raise KeyError(
                f"The cohort has no slide {slide_id!r}; its slides are {_preview(self.ids)}."
            )

    def _stored(self) -> _StoredSlides:
        if not self.on_disk:
            raise ValueError("This cohort is in memory; slide files and stores belong to a "
                             "cohort read from a manifest with hx.io.read_cohort.")
        return self._slides

    @property
    def bulk(self) -> AnnData:
        """Bulk expression, slides x genes, with the slide-level labels in ``obs``."""
        return self._bulk

    @property
    def ids(self) -> list[str]:
        """The slide ids, in order."""
        return list(self._slides)

    def __getitem__(self, slide_id: str) -> SpatialData:
        try:
            return self._slides[slide_id]
        except KeyError:
            raise KeyError(
                f"The cohort has no slide {slide_id!r}; its slides are {_preview(self.ids)}."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._slides)

    def __len__(self) -> int:
        return len(self._slides)

    def subset(self, ids: Iterable[str]) -> Cohort:
        """A cohort of some of the slides, in the order given.

        Parameters
        ----------
        ids
            Slide ids to keep.

        Returns
        -------
        A new cohort sharing the slides' SpatialData objects and a copy of their bulk rows.

        """
        ids = [ids] if isinstance(ids, str) else list(ids)
        unknown = [i for i in ids if i not in self._slides]
        if unknown:
            raise KeyError(
                f"Unknown slide ids {_preview(unknown)}; "
                f"the cohort's slides are {_preview(self.ids)}."
            )
        if self.on_disk:
            return Cohort(self._slides.subset(ids), self._bulk[ids].copy())
        return Cohort({i: self._slides[i] for i in ids}, self._bulk[ids].copy())

    def __repr__(self) -> str:
        obs = ", ".join(self._bulk.obs.columns) or "none"
        where = f"\n    stores: {self.store_dir}" if self.on_disk else ""
        return (
            f"Cohort of {len(self)} slides x {self._bulk.n_vars} genes\n"
            f"    slides: {_preview(self.ids)}\n"
            f"    bulk.obs: {obs}{where}"
        )


def _run_name(run: str | None) -> str:
    """A run of a slide-level model in words: its step and the start of its identity."""
    if run is None:
        return "no record of the model (an earlier version)"
    step, _, identity = str(run).rpartition(":")
    return f"{step or 'model'} {identity[:12]}"


def _preview(ids: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:n])
    return f"[{shown}, ...] ({len(ids)})" if len(ids) > n else f"[{shown}]"


class _StoredSlides(Mapping):
    """Slide files by id, each opened (image lazily, results from its store) when asked for."""

    def __init__(self, paths: dict[str, Path], store_dir: Path, *, image_key: str,
                 mpps: dict[str, float]) -> None:
        for slide_id in paths:  # each id names its store: <store_dir>/<slide_id>.zarr
            check_store_name("slide_id", slide_id, what="slide's store")
        self.paths, self.store_dir, self.image_key, self.mpps = paths, store_dir, image_key, mpps

    def store(self, slide_id: str) -> SlideStore:
        check_store_name("slide_id", slide_id, what="slide's store")
        path = self.store_dir / f"{slide_id}.zarr"
        restore_swap_of(path)  # a rewrite killed between its two renames: the old store back
        return SlideStore(path)

    def open(self, slide_id: str, *, with_results: bool = True) -> SpatialData:
        """The slide's image (lazy), with what its store holds when it is complete."""
        from ._wsi import read_wsi

        sdata = read_wsi(self.paths[slide_id], mpp=self.mpps.get(slide_id),
                         image_key=self.image_key)
        store = self.store(slide_id)
        if with_results:  # never the results of another file than this one
            store.check_slide(self.paths[slide_id])
        if with_results and store.complete:
            self._check_one_model(store)
            store.add_to(sdata)
        if with_results:
            store.add_predictions_to(sdata)
        return sdata

    def _check_one_model(self, store: SlideStore) -> None:
        """Refuse per-tile results of one key that different models made across the slides.

        Each slide's results of a slide-level model record the model (its fingerprint) and the
        run that made them (:meth:`SlideStore.results_model`): a run of ``hx.tl.predict`` on
        part of the cohort, or one interrupted midway, leaves results of two models under one
        key, which would pass for one set of results. ``store`` is the slide's store opened.
        """
        for tiles_key in store.tiles_keys():
            for key in store.results_keys(tiles_key):
                runs: dict[str | None, list[str]] = {}
                for slide_id in self.paths:
                    made = self._results_model(slide_id, tiles_key, key)
                    if made is not None:
                        runs.setdefault(made.get("run"), []).append(slide_id)
                if len(runs) > 1:
                    listed = "; ".join(f"{_run_name(run)}: {_preview(ids, 4)}"
                                       for run, ids in runs.items())
                    raise ValueError(
                        f"The per-tile results {key!r} (tiles {tiles_key!r}) of the slides "
                        f"come from {len(runs)} different models or runs ({listed}): one "
                        "hx.tl.predict(..., overwrite=True) was interrupted, or ran on part of "
                        "the slides only. They would pass for the results of one model, so the "
                        f"slide was not opened. Predict every slide with one model, "
                        f"hx.tl.predict(model, cohort, key_added={key!r}, overwrite=True) (run "
                        "again, an interrupted run finishes; a cross-validation: run it again), "
                        "or put the other model's results under another key_added.")

    def _results_model(self, slide_id: str, tiles_key: str, key: str) -> dict | None:
        """:meth:`SlideStore.results_model`, read again only when the results' record changed.

        Opening every slide of a cohort compares each with all the others: the records read
        are kept with the size, modification time and inode of the file holding them, so a
        cohort of ``n`` slides costs ``n`` reads and ``n * n`` file stats, not ``n * n`` reads.
        """
        store = self.store(slide_id)
        record = store._node(tiles_key, "results", key) / "zarr.json"
        try:
            stat = record.stat()
        except OSError:
            return None  # no results of that key in this slide's store
        facts = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        kept = self.__dict__.setdefault("_models_read", {})
        found = kept.get((slide_id, tiles_key, key))
        if found is None or found[0] != facts:
            found = kept[(slide_id, tiles_key, key)] = (facts, store.results_model(tiles_key,
                                                                                   key))
        return found[1]

    def subset(self, ids: list[str]) -> _StoredSlides:
        return _StoredSlides({i: self.paths[i] for i in ids}, self.store_dir,
                             image_key=self.image_key,
                             mpps={i: self.mpps[i] for i in ids if i in self.mpps})

    def __getitem__(self, slide_id: str) -> SpatialData:
        if slide_id not in self.paths:
            raise KeyError(slide_id)
        return self.open(slide_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, slide_id: object) -> bool:
        return slide_id in self.paths


def read_cohort(
    manifest: str | Path,
    *,
    bulk: AnnData | str | Path | None = None,
    store_dir: str | Path | None = None,
    image_key: str = "he",
) -> Cohort:
    """Read a cohort of slide files from a manifest; slides are opened lazily, one at a time.

    The manifest is a table (CSV, TSV or parquet) with one row per slide:

    - ``path`` (required): the slide file (SVS, NDPI, pyramidal TIFF / OME-TIFF), absolute or
      relative to the manifest's folder;
    - ``slide_id``: the slide's name (defaults to the file name without its extension);
    - ``patient``: the patient (defaults to the slide id), for cross-validation folds that keep a
      patient's slides together (``groups="patient"``);
    - ``mpp``: the pixel size in um/px, where the file's metadata lacks it;
    - any other column: a slide-level label (diagnosis, stage...), copied to ``bulk.obs``.

    Each slide's results (tissue map, tiles, features, per-tile predictions and attention,
    tables of predicted expression) go to its own store, ``<store_dir>/<slide_id>.zarr``
    (:class:`histoexpr.io.SlideStore`): memory does not grow with the cohort, and a later
    Python process that reads the same manifest with the same ``store_dir`` finds them again.

    Parameters
    ----------
    manifest
        The manifest file (``.csv``, ``.tsv``/``.txt`` or ``.parquet``).
    bulk
        Bulk expression, slides x genes, whose ``obs_names`` are the slide ids (an AnnData or an
        ``.h5ad`` file); it must have a row for every slide of the manifest (its other rows are
        left out). ``None``: the cohort has labels only (0 genes).
    store_dir
        Folder of the slides' stores; defaults to ``<manifest folder>/<manifest name>_stores``.
    image_key
        Key of the slide image in each slide's SpatialData.

    Returns
    -------
    A :class:`histoexpr.io.Cohort` on disk, whose ``bulk.obs`` holds ``patient``, ``path`` and
    the manifest's labels.

    Examples
    --------
    >>> import histoexpr as hx
    >>> cohort = hx.io.read_cohort("slides.csv", bulk="bulk.h5ad")  # doctest: +SKIP
    >>> hx.tl.embed_cohort(cohort, encoder="handcrafted")  # doctest: +SKIP

    """
    import anndata as ad
    import pandas as pd

    check_element_name("image_key", image_key)  # before any slide is opened
    # absolute from here on: a dask worker started in another folder finds the same files
    manifest = Path(manifest).expanduser().absolute()
    if not manifest.is_file():
        raise FileNotFoundError(f"No manifest at {manifest}; give the path of a CSV, TSV or "
                                "parquet table with a 'path' column (one row per slide).")
    frame = _read_manifest(manifest)
    if "path" not in frame.columns:
        raise ValueError(f"The manifest has no 'path' column (its columns: {list(frame.columns)}"
                         "); name the column of slide files 'path'.")
    if len(frame) == 0:
        raise ValueError(f"The manifest {manifest.name!r} has no rows.")
    if frame["path"].isna().any():
        rows = list(np.flatnonzero(frame["path"].isna().to_numpy())[:5])
        raise ValueError(f"Manifest rows {rows} have no path; fill in every slide's file.")
    paths = [p if p.is_absolute() else manifest.parent / p
             for p in (Path(str(v)).expanduser() for v in frame["path"])]
    if "slide_id" in frame.columns:
        if frame["slide_id"].isna().any():
            raise ValueError("Some manifest rows have no slide_id; give every slide one.")
        ids = [str(v) for v in frame["slide_id"]]
    else:
        ids = [p.name.split(".")[0] for p in paths]
    for slide_id in ids:  # each names its store, <store_dir>/<slide_id>.zarr
        check_store_name("slide_id", slide_id, what="slide's store (a manifest row's slide_id)")
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ValueError(f"The manifest has duplicated slide ids {duplicated[:5]}; make them "
                         "unique (add a slide_id column).")
    folded: dict[str, list[str]] = {}
    for slide_id in ids:  # stores S1.zarr and s1.zarr are one folder on macOS and Windows,
        # and so are café written with one character or two (é, e + accent) on macOS
        folded.setdefault(unicodedata.normalize("NFC", slide_id).casefold(), []).append(
            slide_id)
    clashes = [names for names in folded.values() if len(names) > 1]
    if clashes:
        raise ValueError(f"The manifest has slide ids that differ only in case or in how their "
                         f"letters are encoded ({clashes[:3]}): their stores would be one "
                         "folder on a case-insensitive or normalising file system (macOS, "
                         "Windows), each slide overwriting the other's results. Make them "
                         "differ in more than that.")
    resolved = [p.resolve() for p in paths]
    twice = sorted({str(p) for p in resolved if resolved.count(p) > 1})
    if twice:
        named = [i for i, p in zip(ids, resolved, strict=True) if str(p) == twice[0]]
        raise ValueError(f"The manifest names the same slide file more than once ({twice[0]} "
                         f"as {named}): it would count twice, and cross-validation could train "
                         "on the copy of a slide it scores. Keep one row per slide file.")
    folders = [str(p) for p in paths if p.is_dir()]
    if folders:
        raise ValueError(f"{len(folders)} paths of the manifest are folders, not slide files, "
                         f"e.g. {folders[:3]}; give each slide's file (a slide stored as a "
                         "folder: convert it to a pyramidal OME-TIFF first, e.g. with bfconvert "
                         "or vips tiffsave).")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} slide files of the manifest do not exist, e.g. "
                                f"{missing[:3]}; fix their paths (relative paths are read from "
                                f"{manifest.parent}).")
    mpps: dict[str, float] = {}
    if "mpp" in frame.columns:
        for slide_id, value in zip(ids, frame["mpp"], strict=True):
            if pd.notna(value):
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    number = float("nan")
                if not (number > 0 and np.isfinite(number)):
                    raise ValueError(f"The mpp of slide {slide_id!r} is {value!r}; give a "
                                     "positive pixel size in um/px (e.g. 0.5), or leave it "
                                     "empty to read it from the slide file.")
                mpps[slide_id] = number
    labels = frame.drop(columns=[c for c in ("path", "slide_id", "mpp") if c in frame.columns])
    labels.index = pd.Index(ids)
    labels.insert(0, "path", [str(p) for p in paths])
    if "patient" not in labels.columns:
        labels["patient"] = ids
    labels["patient"] = labels["patient"].astype(str)

    if bulk is None:
        bulk_data = ad.AnnData(X=np.zeros((len(ids), 0), dtype=np.float32),
                               obs=pd.DataFrame(index=pd.Index(ids)))
    else:
        bulk_data = _read_bulk(bulk) if isinstance(bulk, str | Path) else bulk
        if not isinstance(bulk_data, ad.AnnData):
            raise TypeError(f"bulk must be an AnnData or an .h5ad file, got "
                            f"{type(bulk_data).__name__}.")
        if not bulk_data.obs_names.is_unique:
            repeated = sorted(set(bulk_data.obs_names[bulk_data.obs_names.duplicated()]))
            raise ValueError(f"bulk has {len(repeated)} slide id(s) more than once in its "
                             f"obs_names ({_preview([str(i) for i in repeated])}); each slide "
                             "must be one row. Keep one row per slide (e.g. "
                             "bulk[~bulk.obs_names.duplicated()]) and read again.")
        absent = [i for i in ids if i not in set(bulk_data.obs_names)]
        if absent:
            raise ValueError(f"{len(absent)} slides of the manifest have no row in bulk (e.g. "
                             f"{absent[:3]}); bulk.obs_names must be the slide ids. Give every "
                             "slide its expression, or drop those slides from the manifest.")
        extra = bulk_data.n_obs - len(ids)
        if extra:
            logger.info("Left out %d bulk rows whose slide is not in the manifest.", extra)
        bulk_data = bulk_data[ids].copy()
    obs = bulk_data.obs
    for column in labels.columns:
        if column in obs.columns:
            same = obs[column].astype(str).to_numpy() == labels[column].astype(str).to_numpy()
            if not same.all():
                raise ValueError(f"Column {column!r} differs between the manifest and bulk.obs "
                                 "(e.g. slide "
                                 f"{np.asarray(ids)[~same][0]!r}); keep it in one of them.")
        else:
            obs[column] = labels[column].to_numpy()
    store_dir = manifest.parent / f"{manifest.stem}_stores" if store_dir is None \
        else Path(store_dir).expanduser().absolute()
    if store_dir.exists() and not store_dir.is_dir():
        raise NotADirectoryError(f"store_dir {store_dir} is a file; give a folder.")
    slides = _StoredSlides(dict(zip(ids, paths, strict=True)), store_dir, image_key=image_key,
                           mpps=mpps)
    cohort = Cohort(slides, bulk_data)
    done = sum(cohort.store(i).complete for i in ids)
    logger.info("Read a cohort of %d slides (%d patients); %d with tiles and features "
                "(hx.tl.embed_cohort) in %s.", len(ids), obs["patient"].nunique(), done,
                store_dir)
    return cohort


def _read_manifest(manifest: Path):
    """The manifest's table, or a ``ValueError`` naming the file and the format expected."""
    import pandas as pd

    suffix = manifest.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt", ".tab"):
        kind = "comma-separated (CSV)" if suffix == ".csv" else "tab-separated (TSV)"
        # identifiers stay as written ("001" is not 1): the id columns are read as text
        try:
            return pd.read_csv(manifest, sep="," if suffix == ".csv" else "\t",
                               dtype={column: str for column in _ID_COLUMNS})
        except pd.errors.EmptyDataError:
            raise ValueError(f"The manifest {manifest.name!r} is empty; write a header line "
                             "with a 'path' column and one row per slide.") from None
        except (ValueError, OSError) as error:  # ParserError, UnicodeDecodeError: ValueErrors
            raise ValueError(
                f"The manifest {str(manifest)!r} cannot be read as a {kind} table "
                f"({type(error).__name__}: {' '.join(str(error).split())}). Check it (an "
                "unclosed quote, a line with more cells than the header, another text encoding "
                "than UTF-8) and save it again as a table with a header line holding a 'path' "
                "column and one row per slide.") from None
    if suffix in (".parquet", ".pq"):
        try:
            return pd.read_parquet(manifest)
        except (ValueError, OSError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise ValueError(
                f"The manifest {str(manifest)!r} is not a readable parquet file "
                f"({type(error).__name__}: {' '.join(str(error).split())[:200]}). Write it "
                "again with pandas' DataFrame.to_parquet, or save it as a .csv table with a "
                "'path' column (one row per slide).") from None
    raise ValueError(f"The manifest {manifest.name!r} is not a .csv, .tsv or .parquet "
                     "file; save it as one of these.")


def _read_bulk(bulk: str | Path):
    """The AnnData of an ``.h5ad`` file given as ``bulk=``, or an error naming the file."""
    import anndata as ad

    from ._elements import existing_file

    path = existing_file(bulk, "bulk expression (bulk=)",
                         "give the .h5ad file of the slides' bulk expression (slides x genes), "
                         "or an AnnData")
    if not path.is_file():
        raise IsADirectoryError(f"bulk={str(path)!r} is a folder; give the .h5ad file of the "
                                "slides' bulk expression (slides x genes), or an AnnData.")
    try:
        return ad.read_h5ad(path)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"bulk={str(path)!r} cannot be read as an .h5ad file ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:200]}). Give the AnnData's .h5ad file (written by "
            "adata.write_h5ad: slides x genes, obs_names the slide ids), or the AnnData "
            "itself; a table of expression (CSV) can be read with anndata.read_csv first.") \
            from None
