"""One name per idea: the conventions table, the forbidden synonyms and the survey.

This is the one place the synonym table lives; the "Names" table of ``docs/design.md`` matches
it (``tests/house/test_names.py`` checks both ways). Run it to print the survey of every public
parameter name, grouped by name, with the functions that use it::

    PYTHONPATH=src python tests/_names.py
"""

from __future__ import annotations

import importlib
import inspect
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

ROOMS = ("io", "pp", "tl", "pl", "datasets", "models")

#: idea -> the one name, its type and range, an example, and the synonyms it replaces
CONVENTIONS: list[dict[str, Any]] = [
    {"idea": "first parameter, one SpatialData", "name": "sdata", "type": "SpatialData",
     "example": "hx.pp.tile(sdata, ...)", "synonyms": ["section", "sdatas"]},
    {"idea": "first parameter, one AnnData", "name": "adata", "type": "AnnData",
     "example": "hx.pp.expression_targets(adata, genes)", "synonyms": []},
    {"idea": "first parameter, several kinds or a list", "name": "data",
     "type": "SpatialData or list or Cohort or AnnData or list[AnnData]",
     "example": "hx.pp.select_genes(data, n_top=50)", "synonyms": ["sections", "adatas"]},
    {"idea": "side of a tile or patch in um", "name": "size_um", "type": "float > 0",
     "example": "size_um=112.0", "synonyms": ["patch_um", "patch_size_um", "tile_um"]},
    {"idea": "side of a tile or patch in pixels", "name": "size_px", "type": "int >= 1",
     "example": "size_px=224", "synonyms": ["size", "tile_px"]},
    {"idea": "distance between grid tiles or patches in um", "name": "stride_um",
     "type": "float > 0", "example": "stride_um=56.0",
     "synonyms": ["stride", "patch_stride_um", "step_um"]},
    {"idea": "distance between grid tiles in pixels", "name": "stride_px", "type": "float > 0",
     "example": "stride_px=112", "synonyms": []},
    {"idea": "smallest tissue fraction of a tile or window", "name": "min_tissue",
     "type": "float in [0, 1]", "example": "min_tissue=0.5",
     "synonyms": ["min_tissue_fraction", "tissue_fraction"]},
    {"idea": "shapes a tile is centred on", "name": "centres", "type": "str or None",
     "example": 'centres="spots"', "synonyms": ["centers", "center"]},
    {"idea": "held-out share of the training data for early stopping", "name": "val_fraction",
     "type": "float in [0, 1) (0: no validation split)", "example": "val_fraction=0.2",
     "synonyms": ["validation_fraction", "val_size", "val_frac"]},
    {"idea": "pixel size in um/px", "name": "mpp", "type": "float > 0 (or <what>_mpp)",
     "example": "mpp=0.5", "synonyms": ["pixel_size", "um_per_px", "resolution"]},
    {"idea": "random seed", "name": "seed", "type": "int or None (None: hx.settings.seed)",
     "example": "seed=0", "synonyms": ["random_state", "rng_seed"]},
    {"idea": "training epochs", "name": "epochs", "type": "int >= 1", "example": "epochs=20",
     "synonyms": ["n_epochs", "max_epochs"]},
    {"idea": "samples per batch", "name": "batch_size", "type": "int >= 1",
     "example": "batch_size=64", "synonyms": ["bs", "batchsize"]},
    {"idea": "learning rate", "name": "lr", "type": "float > 0", "example": "lr=1e-3",
     "synonyms": ["learning_rate"]},
    {"idea": "torch device", "name": "device", "type": "str or None (None: hx.settings.device)",
     "example": 'device="cuda"', "synonyms": ["accelerator"]},
    {"idea": "cross-validation folds", "name": "n_folds", "type": "int >= 2",
     "example": "n_folds=5", "synonyms": ["n_splits", "folds", "k_folds"]},
    {"idea": "gene names", "name": "genes", "type": "Sequence[str]",
     "example": 'genes=["EPCAM", "VIM"]', "synonyms": ["gene_names", "gene_list"]},
    {"idea": "how many of the top items", "name": "n_top", "type": "int >= 1",
     "example": "n_top=30", "synonyms": ["top", "n_top_genes"]},
    {"idea": "fewest counts (transcripts)", "name": "min_counts", "type": "int >= 1",
     "example": "min_counts=100", "synonyms": ["min_count"]},
    {"idea": "key of an element read", "name": "<kind>_key",
     "type": "str (image_key, tiles_key, table_key, spots_key, points_key, labels_key, ...)",
     "example": 'tiles_key="he_tiles"', "synonyms": ["image_name", "table_name", "img_key"]},
    {"idea": "key a step writes under", "name": "key_added", "type": "str or None",
     "example": 'key_added="pred"', "synonyms": ["out_key", "output_key", "added_key"]},
    {"idea": "key of a prediction (or its truth) read", "name": "pred_key",
     "type": "str (truth_key for the truth)", "example": 'pred_key="abmil"',
     "synonyms": ["key", "prediction_key", "predictions_key"]},
    {"idea": "replace what the same step wrote", "name": "overwrite", "type": "bool = False",
     "example": "overwrite=True", "synonyms": ["force", "replace"]},
    {"idea": "a choice among named methods", "name": "method / flavor / kind",
     "type": "typing.Literal[...] checked by check_choice", "example": 'flavor="seurat_v3"',
     "synonyms": []},
    {"idea": "British spelling", "name": "standardise",
     "type": "(also centres, normalise, colour in prose; scanpy's color/flavor kept)",
     "example": "standardise=True", "synonyms": ["standardize"]},
]

#: forbidden synonym -> the name to use instead
FORBIDDEN: dict[str, str] = {s: c["name"] for c in CONVENTIONS for s in c["synonyms"]}

#: (function, parameter) -> why it keeps a forbidden name for now; remove an entry with its rename.
ALLOWED: dict[tuple[str, str], str] = {
    ("io.read_transcripts", "pixel_size"): "um per unit of the table's x/y, not an image's "
                                           "pixel size; rename to a clearer name is pending",
    ("io.read_cell_boundaries", "pixel_size"): "as io.read_transcripts",
    ("tl.BenchmarkResult", "sections"): "a result's table of scores per held-out section, not "
                                        "the data a function takes",
}


def _module_functions() -> Iterator[tuple[str, Any]]:
    """(name, object) of every model's options (its fit), its predict, the cross-validators and
    evaluators."""
    api = importlib.import_module("histoexpr.tl._api")
    options = importlib.import_module("histoexpr.tl._models")
    for name, module in api.MODELS.items():
        loaded = importlib.import_module(module, "histoexpr.tl")
        yield f"tl[{name}].fit", options.OPTIONS[name]  # its fields are fit's options
        yield f"tl[{name}].predict", loaded.predict
    for table in (getattr(api, "CROSS_VALIDATORS", {}), getattr(api, "EVALUATORS", {})):
        for name, (module, function) in table.items():
            yield f"tl[{name}].{function}", getattr(importlib.import_module(module,
                                                                            "histoexpr.tl"),
                                                    function)


def public_callables() -> Iterator[tuple[str, Any]]:
    """(name, object) of every ``__all__`` name of every room and every model's functions."""
    for room in ROOMS:
        module = importlib.import_module(f"histoexpr.{room}")
        for name in module.__all__:
            yield f"{room}.{name}", getattr(module, name)
    yield from _module_functions()


def parameters(obj: Any) -> list[str]:
    """The parameter names ``help()`` shows (``self`` and ``**kwargs`` left out)."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [p.name for p in signature.parameters.values()
            if p.name not in ("self", "cls") and p.kind is not p.VAR_KEYWORD
            and p.kind is not p.VAR_POSITIONAL]


def survey() -> dict[str, list[str]]:
    """Parameter name -> the functions that use it."""
    uses: dict[str, list[str]] = defaultdict(list)
    for qualname, obj in public_callables():
        for name in parameters(obj):
            uses[name].append(qualname)
    return dict(sorted(uses.items()))


if __name__ == "__main__":
    for name, where in survey().items():
        flag = f"  FORBIDDEN -> {FORBIDDEN[name]}" if name in FORBIDDEN else ""
        print(f"{name} ({len(where)}): {', '.join(where)}{flag}")
