"""The ``histoexpr`` command line."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ._cli_cohort import CannotPredictError, load_model_file, run_predict_cohort
from ._core.files import changed_in_folder, folder_listing, restore_swap_of, written_beside
from ._core.logs import SlidesFailedError, logger, shown
from ._core.validate import check_bool, check_element_name
from ._demo import SIZES, run_demo

#: exit code for bad input: a missing or unreadable file, an existing output, a bad option
EXIT_BAD_INPUT = 2
#: exit code for a model this histoexpr cannot apply (unknown kind, or data it cannot predict on)
EXIT_CANNOT_PREDICT = 3
EXIT_CODES = (f"exit codes: 0 success, {EXIT_BAD_INPUT} bad input (missing or unreadable file, "
              f"existing output, bad option), {EXIT_CANNOT_PREDICT} a model this histoexpr "
              "cannot apply")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="histoexpr",
        description="Link what tissue looks like to what it expresses.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"histoexpr {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run every job on the built-in synthetic data and write a report folder",
        description="Train and apply each of histoexpr's models on synthetic sections and "
        "slides (transcript-supervised patch classifier, attention MIL, contrastive "
        "pretraining, spot expression), each scored on data it never saw. Writes summary.md, "
        "metrics.json, PNG maps and the first section as section.zarr into --out.",
    )
    demo.add_argument("--out", type=Path, default=Path("histoexpr-demo"),
                      help="report folder (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--size", choices=sorted(SIZES), default="default",
                      help="data and training size: 'default' takes about half a minute on "
                      "2 CPU cores, 'quick' about half that (default: %(default)s)")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace the report folder if it exists")
    _add_predict_parser(commands)
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            run_demo(args.out, seed=args.seed, size=args.size, overwrite=args.overwrite)
        elif args.command == "predict" and args.manifest is not None:
            _check_source_options(args)
            run_predict_cohort(args.model, args.manifest, store_dir=args.store_dir,
                               batch_size=args.batch_size, device=args.device,
                               overwrite=args.overwrite, workers=args.workers or 0,
                               image_key=args.image_key, root=args.root, imports=args.imports)
        elif args.command == "predict":
            _check_source_options(args)
            if args.out is None:
                parser.error("predict --image needs --out OUT.zarr")
            run_predict(args.model, args.image, args.out, image_key=args.image_key,
                        mpp=args.mpp, batch_size=args.batch_size, device=args.device,
                        overwrite=args.overwrite, root=args.root, imports=args.imports)
    except (CannotPredictError, SlidesFailedError) as error:
        print(f"histoexpr {args.command}: error: {error}", file=sys.stderr)
        return EXIT_CANNOT_PREDICT
    except (FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError, KeyError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"histoexpr {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _version() -> str:
    from . import __version__

    return __version__


def _add_predict_parser(commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="apply a trained model file to a slide (or a manifest of slides) and write the "
             "predictions",
        description="Read a slide (a whole-slide image, or a SpatialData .zarr store), tile it as "
        "the model was trained (its pixel size and tile size) where the model needs tiles, run "
        "the model in batches and write the slide with its predictions to OUT.zarr. Open the "
        "result with spatialdata.read_zarr, hx.pl.napari or napari (histoexpr's reader). With "
        "--manifest (a model that predicts a cohort: a spot regressor, a bag model such as "
        "abmil, or a model of your own registered with cohort=True or kind='spot'): every "
        "slide of the manifest is predicted into its own store (hx.io.read_cohort's stores), "
        "tiled on its tissue (and, for a bag model, embedded as in training) where its store "
        "lacks them; a spot regressor's rerun skips the slides already predicted by the same "
        "model from the same file. A model written outside histoexpr needs --import of the "
        "module that registers it.",
        epilog=EXIT_CODES,
    )
    predict.add_argument("--model", "-m", type=Path, required=True, metavar="M",
                         help="model file written by hx.io.save_model")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", "-i", type=Path, metavar="SLIDE",
                        help="whole-slide image (SVS, NDPI, TIFF...; a JPEG/PNG with --mpp) or a "
                             "SpatialData .zarr store")
    source.add_argument("--manifest", type=Path, metavar="SLIDES.csv",
                        help="manifest of slide files (CSV, TSV or parquet with a 'path' column, "
                             "as hx.io.read_cohort reads it)")
    predict.add_argument("--out", "-o", type=Path, default=None, metavar="OUT.zarr",
                         help="--image: SpatialData store to write")
    predict.add_argument("--store-dir", type=Path, default=None, metavar="DIR",
                         help="--manifest: folder of the slides' stores (default: "
                              "<manifest folder>/<manifest name>_stores)")
    predict.add_argument("--workers", type=int, default=None, metavar="N",
                         help="--manifest: predict on N local dask worker processes (default: "
                              "none, one slide after the other here)")
    predict.add_argument("--image-key", default=None,
                         help="name of the image; defaults to the one the model was trained on")
    predict.add_argument("--mpp", type=float, default=None,
                         help="pixel size of the slide in um, where its metadata lacks it")
    predict.add_argument("--batch-size", type=int, default=64,
                         help="tiles per forward pass (default: %(default)s)")
    predict.add_argument("--device", default=None, help="torch device (default: the best found)")
    predict.add_argument("--import", dest="imports", action="append", default=[],
                         metavar="MODULE",
                         help="import this module of yours (by name: installed, or its folder "
                              "on PYTHONPATH) before the model file is loaded: the code that "
                              "registers a model from outside histoexpr (hx.tl.register_model) "
                              "and its network class (hx.models.register_network) when "
                              "imported; repeat for several")
    predict.add_argument("--root", type=Path, default=None, metavar="DIR",
                         help="folder that relative paths written inside the model file (its "
                              "encoder's folder or file) are relative to; without it they are "
                              "refused")
    predict.add_argument("--overwrite", action="store_true",
                         help="replace OUT.zarr if it exists, and this model's predictions if "
                              "the input store already holds them")


def run_predict(model_path: Path, image_path: Path, out: Path, *, image_key: str | None = None,
                mpp: float | None = None, batch_size: int = 64, device: str | None = None,
                overwrite: bool = False, root: Path | None = None,
                imports: list[str] | tuple[str, ...] = ()) -> dict:
    """Apply a model file to a slide and write the slide with its predictions to ``out``.

    The modules ``imports`` (``--import``) are imported first, by name. Returns what was run:
    the model, the image key and the elements the prediction added.
    """
    import histoexpr as hx

    overwrite = check_bool("overwrite", overwrite)
    if out.suffix != ".zarr":
        raise ValueError(f"The output {out} must be a .zarr store (a name ending in .zarr).")
    restore_swap_of(out)  # an earlier run killed midway put back first
    if out.exists() or out.is_symlink():  # what is there is the user's until shown otherwise
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it or choose -o.")
        check_own_store(out)
    _check_before_work(model_path, image_path, out, mpp=mpp, batch_size=batch_size,
                       device=device, image_key=image_key)
    if out.resolve() == image_path.resolve():
        raise ValueError(f"The output {out} is the input store, which is read lazily while the "
                         "output is written; choose another -o.")
    hx.settings.verbosity = 2
    model, name = load_model_file(model_path, device=device, root=root, imports=imports)
    accepted = hx.tl.predict_options(name)
    if not image_path.exists():
        raise FileNotFoundError(f"No image at {image_path}.")
    image_key = image_key or model.metadata.get("image_key") or "he"
    sdata = _read_slide(image_path, image_key=image_key, mpp=mpp)
    _tile_as_trained(sdata, model.metadata, image_key)
    before = set(_element_names(sdata))
    options = {"image_key": image_key, "batch_size": batch_size, "device": device,
               "overwrite": overwrite}
    try:
        result = hx.tl.predict(model, sdata,
                               **{k: v for k, v in options.items() if k in accepted})
    except (KeyError, ValueError, TypeError) as error:
        raise CannotPredictError(f"the {name} model cannot predict on {image_path}: "
                                 f"{error}") from error
    guard = _guard_line(result)
    if guard:
        logger.info("%s: %s", image_path.name, guard)
    added = sorted(set(_element_names(sdata)) - before)
    attrs = dict(sdata.attrs.get(STORE_MARKER) or {})
    sdata.attrs[STORE_MARKER] = {**attrs, "written_by": WRITTEN_BY, "model": name}
    # the new store is written beside OUT and swapped in at the end: a failure or a kill while
    # writing leaves the old store as it was
    with written_beside(out) as temporary:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="zarr v3 autosharding",
                                    category=UserWarning)
            sdata.write(temporary)
        _record_listing(temporary, out)
        if out.exists() or out.is_symlink():
            check_own_store(out)  # again: nothing may have taken its place meanwhile
    logger.info("Predictions of the %s model written to %s: %s", name, out, added)
    return {"model": name, "image_key": image_key, "added": added, "guard": guard}


def _guard_line(result) -> str | None:
    """The guard's summary of a prediction table in words (``None``: the model has none)."""
    uns = getattr(result, "uns", None)
    guard = ((uns or {}).get("prediction") or {}).get("guard") or {}
    if not guard.get("available"):
        return None
    verdict = ("most of it is unlike the training data: the predictions are extrapolations"
               if guard["warns"] else "within the training data's range")
    return (f"{guard['fraction_out_of_range']:.0%} of {guard['n_tiles']} tiles out of the "
            f"training data's range ({verdict}; uns['prediction']['guard'] of the table)")


#: the options of one source (``--image`` or ``--manifest``) that the other would silently
#: ignore, each with where its value goes instead
_SOURCE_OPTIONS = {
    "manifest": {"out": "--out: with --manifest each slide's predictions go to its own store "
                        "(--store-dir)",
                 "mpp": "--mpp: with --manifest give each slide's pixel size in the manifest's "
                        "mpp column"},
    "image": {"store_dir": "--store-dir: with --image the slide and its predictions are "
                           "written to --out OUT.zarr (--store-dir is for --manifest)",
              "workers": "--workers: with --image the slide is predicted here, in this process "
                         "(--workers is for --manifest)"},
}


def _check_source_options(args) -> None:
    """Refuse the options of ``predict --image`` given with ``--manifest``, and the reverse.

    Each would be silently ignored by the other source.
    """
    source = "manifest" if args.manifest is not None else "image"
    given = [fix for name, fix in _SOURCE_OPTIONS[source].items()
             if getattr(args, name) is not None]
    if given:
        raise ValueError(f"{'; '.join(given)}. Drop the option{'s' * (len(given) > 1)}.")


def _check_before_work(model_path: Path, image_path: Path, out: Path, *, mpp: float | None,
                       batch_size: int, device: str | None, image_key: str | None = None
                       ) -> None:
    """Every argument of ``histoexpr predict`` checked before the model is loaded or run.

    So that a wrong option or an output folder that cannot be written stops the command at
    once, not after the slide has been read, tiled and predicted.
    """
    import os

    from ._settings import _validate_device

    for path, what in ((model_path, "model file"), (image_path, "image")):
        if not path.exists():
            raise FileNotFoundError(f"No {what} at {path}; check the path.")
    if mpp is not None and not (mpp > 0 and mpp < float("inf")):
        raise ValueError(f"--mpp must be a positive pixel size in um, got {mpp}; e.g. --mpp 0.5.")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}.")
    if device is not None:
        _validate_device(device)
    if image_key is not None:
        check_element_name("--image-key", image_key)
    parent = out.absolute().parent
    if not parent.is_dir():
        raise FileNotFoundError(f"The folder of the output, {parent}, does not exist; create it "
                                "first or choose another -o.")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"The folder of the output, {parent}, cannot be written to; choose "
                         "another -o.")


#: ``sdata.attrs`` key (kept in the store's root attributes) and value by which
#: ``histoexpr predict`` marks the stores it writes, so that ``--overwrite`` replaces only those
STORE_MARKER = "histoexpr"
WRITTEN_BY = "histoexpr predict"
#: what a SpatialData store holds at its root (zarr v2 and v3 metadata, the element groups)
_STORE_ENTRIES = {"zarr.json", ".zgroup", ".zattrs", ".zmetadata", "images", "labels", "points",
                  "shapes", "tables"}


_ZARR_METADATA = {"zarr.json", ".zgroup", ".zattrs", ".zmetadata"}


def _is_zarr_node(path: Path) -> bool:
    """Whether ``path`` is a folder holding zarr's metadata (a group or an array)."""
    return (path.is_dir() and not path.is_symlink()
            and any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray")))


def check_own_store(out: Path) -> None:
    """Raise unless ``out`` is a SpatialData store that ``histoexpr predict`` wrote.

    Such a store carries ``{"histoexpr": {"written_by": "histoexpr predict"}}`` in its root
    attributes, written for this path, with the list of every file it wrote (size and time),
    and holds nothing else: anything else (a folder or file of the user's, their own .zarr
    store, a copy of a prediction store written elsewhere, an element or file added inside) is
    refused before anything is deleted.
    """
    import json

    refuse = (f"{out} exists and is not a store written by `histoexpr predict`")
    fix = ("--overwrite only replaces a store that `histoexpr predict` wrote, so nothing was "
           "deleted. Choose another -o, or move or delete it yourself.")
    if out.is_symlink() or not out.is_dir():
        raise FileExistsError(f"{refuse} (it is a file or a link). {fix}")
    attrs: dict = {}
    for name, read in (("zarr.json", lambda d: d.get("attributes", {})), (".zattrs", dict)):
        try:
            attrs = read(json.loads((out / name).read_text()))
            break
        except (OSError, ValueError, AttributeError, TypeError):
            continue
    marker = attrs.get(STORE_MARKER) if isinstance(attrs, dict) else None
    if not isinstance(marker, dict) or marker.get("written_by") != WRITTEN_BY:
        raise FileExistsError(f"{refuse} (its root attributes lack the histoexpr predict "
                              f"marker). {fix}")
    listing = marker.get("listing")
    if not isinstance(listing, dict) or marker.get("path") != str(out.absolute()):
        raise FileExistsError(
            f"{refuse} at this path (its marker does not list the files written here: a copy "
            f"of another store, or a store of an earlier version). {fix}")
    changed = changed_in_folder(out, listing, leave_out=["zarr.json"])
    if changed:
        raise FileExistsError(f"{refuse} alone: files were added or changed in it since "
                              f"({shown(changed, 5)}). {fix}")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in _STORE_ENTRIES)
    for kind in sorted(_STORE_ENTRIES & {"images", "labels", "points", "shapes", "tables"}):
        folder = out / kind  # each element: a zarr group or array, nothing else beside them
        if folder.is_dir() and not folder.is_symlink():
            foreign += [f"{kind}/{p.name}" for p in sorted(folder.iterdir())
                        if p.name not in _ZARR_METADATA and not _is_zarr_node(p)]
    if foreign:
        raise FileExistsError(f"{refuse} alone: it also holds {', '.join(foreign[:5])}, which a "
                              f"SpatialData store does not. {fix}")


def _record_listing(store: Path, out: Path) -> None:
    """Record in the written store's marker the path it is written for and every file in it.

    So that ``--overwrite`` replaces it only as written, at that path: not a copy the user
    wrote elsewhere from it (the marker travels with its attributes), nor one with an element
    or file added since (:func:`check_own_store`).
    """
    import zarr

    group = zarr.open_group(store, mode="a")
    marker = dict(group.attrs.get(STORE_MARKER) or {})
    marker.update(path=str(out.absolute()),
                  listing=folder_listing(store, leave_out=["zarr.json"]))
    group.attrs[STORE_MARKER] = marker


def _read_slide(path: Path, *, image_key: str, mpp: float | None):
    """Read a SpatialData .zarr store, or a whole-slide image as ``image_key``."""
    import histoexpr as hx

    if path.is_dir():
        import spatialdata as sd

        try:
            sdata = sd.read_zarr(path)
        except Exception as error:  # zarr raises many kinds for a folder that is no store
            raise ValueError(f"{path} is a folder but not a readable SpatialData store: "
                             f"{error}") from error
        if image_key not in sdata.images:
            raise KeyError(f"{path} has no image {image_key!r} (it has {sorted(sdata.images)}); "
                           "pass --image-key.")
        return sdata
    try:
        return hx.io.read_wsi(path, mpp=mpp, image_key=image_key)
    except (OSError, ValueError) as error:
        hint = (" On the command line: --mpp 0.5 (um per pixel of the image)."
                if mpp is None and "mpp=" in str(error) else "")
        raise ValueError(f"Cannot read {path} as a slide: {error}{hint}") from error


def _tile_as_trained(sdata, metadata: dict, image_key: str) -> None:
    """Cut the tiles a model names in its metadata, at its pixel and tile size, if absent."""
    import histoexpr as hx

    from ._core.records import ModelMetadata

    tiles_key = metadata.get("tiles_key")
    record = ModelMetadata.from_uns(metadata)  # a file's metadata, as load_model reads it
    if (tiles_key is None or tiles_key in sdata.shapes or not isinstance(record.size_um, float)
            or record.mpp is None):
        return
    hx.pp.tile(sdata, image_key, size_um=record.size_um, mpp=record.mpp, key_added=tiles_key)


def _element_names(sdata) -> list[str]:
    return [f"{kind}/{name}" for kind, name, _ in sdata.gen_elements()]
