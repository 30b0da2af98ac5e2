"""napari layers of a section: image pyramids, label maps, transcripts, and coloured spots/tiles.

The layers are built with napari-spatialdata's own builders (``SpatialDataViewer.get_sdata_*``),
so they carry its metadata (the element, its table) and its widgets work on them, and each layer
gets the element's transformation to ``"global"`` as its affine: every layer is in micrometres
and they align. We do not use ``napari_spatialdata.Interactive.add_element``: it loads layers in
a worker thread, so a layer could not be coloured right after it was asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core.logs import logger
from .._core.ownership import require_element
from ._spatial import _shape_values

if TYPE_CHECKING:
    from anndata import AnnData
    from napari.layers import Layer
    from spatialdata import SpatialData

COORDINATE_SYSTEM = "global"
#: diameter of a transcript in the viewer, in um
TRANSCRIPT_SIZE_UM = 2.0


def section_layers(sdata: SpatialData, *, images: Sequence[str] | None = None,
                   labels: Sequence[str] | None = None,
                   points: Sequence[str] | None = None) -> list[Layer]:
    """Napari layers of a section in micrometres: images, label maps, points, then shapes."""
    from napari.components import ViewerModel
    from napari.utils.events import EventedList
    from napari_spatialdata._viewer import SpatialDataViewer

    # the builders need a viewer only to bind keys; a Qt-free ViewerModel is enough
    builder = SpatialDataViewer(ViewerModel(), EventedList([sdata]))
    chosen = {kind: _chosen(sdata, kind, keys)
              for kind, keys in (("images", images), ("labels", labels), ("points", points))}
    layers = [builder.get_sdata_image(sdata, key, COORDINATE_SYSTEM, False)
              for key in chosen["images"]]
    layers += [builder.get_sdata_labels(sdata, key, COORDINATE_SYSTEM, False)
               for key in chosen["labels"]]
    for key in chosen["points"]:
        layer = builder.get_sdata_points(sdata, key, COORDINATE_SYSTEM, False)
        _style_transcripts(layer)
        layers.append(layer)
    for key in sorted(sdata.shapes):
        if "radius" in sdata.shapes[key].columns:  # circles become a points layer
            layer = builder.get_sdata_circles(sdata, key, COORDINATE_SYSTEM, False)
        else:
            layer = builder.get_sdata_shapes(sdata, key, COORDINATE_SYSTEM, False)
            layer.edge_color = "white"
            layer.edge_width = 1.0
        layer.metadata["histoexpr_choices"] = color_choices(sdata, key)
        layers.append(layer)
    return layers


def color_choices(sdata: SpatialData, shapes_key: str) -> list[str]:
    """List what can colour a shapes element.

    These are the ``obs`` columns, the columns of the ``obsm`` DataFrames (as
    ``"<obsm key>:<column>"``) and the genes of the tables annotating it.
    """
    choices: list[str] = []
    for table in _annotating_tables(sdata, shapes_key).values():
        choices += [str(c) for c in table.obs.columns
                    if c not in _table_keys(table)]
        choices += [f"{key}:{column}" for key, frame in table.obsm.items()
                    if isinstance(frame, pd.DataFrame) for column in frame.columns]
        choices += [str(gene) for gene in table.var_names]
    return list(dict.fromkeys(choices))


def color_values(sdata: SpatialData, shapes_key: str, color: str, *,
                 table_key: str | None = None) -> pd.Series:
    """Values of ``color`` for each shape of ``shapes_key``, in the shapes' order."""
    require_element(sdata, shapes_key, "shapes")
    tables = _annotating_tables(sdata, shapes_key)
    if table_key is not None:
        if table_key not in tables:
            raise KeyError(f"Table {table_key!r} does not annotate {shapes_key!r}; tables that "
                           f"do: {sorted(tables)}.")
        tables = {table_key: tables[table_key]}
    for table in tables.values():
        if _has(table, color):
            return _values_of(sdata.shapes[shapes_key], table, color, shapes_key)
    raise KeyError(f"{color!r} is in no table annotating {shapes_key!r} ({sorted(tables)}); it "
                   f"can be one of: {color_choices(sdata, shapes_key)[:20]}...")


def color_layer(layer: Layer, color: str, *, table_key: str | None = None, cmap: str = "viridis",
                contrast_limits: tuple[float, float] | None = None) -> None:
    """Colour a spots/tiles layer made by :func:`section_layers` by ``color``.

    Numbers go through ``cmap`` between ``contrast_limits`` (the values' range when ``None``);
    categories get one colour each. The values are kept in ``layer.features[color]``.
    """
    sdata, shapes_key = layer.metadata["sdata"], layer.metadata["name"]
    values = color_values(sdata, shapes_key, color, table_key=table_key)
    missing = int(values.isna().sum())
    if missing:
        logger.warning("%d of %d shapes of %r have no value of %r; they are drawn at the low end "
                       "of the colours.", missing, len(values), shapes_key, color)
    if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object:
        layer.features = pd.DataFrame({color: values.astype("category").to_numpy()})
        layer.face_color = color
        layer.metadata["histoexpr_color"] = color
        return
    numbers = values.to_numpy(dtype=float)
    low, high = _limits(numbers) if contrast_limits is None else contrast_limits
    layer.features = pd.DataFrame({color: np.nan_to_num(numbers, nan=low)})
    layer.face_colormap = cmap
    layer.face_color = color
    layer.face_contrast_limits = (float(low), float(high))
    layer.refresh_colors(update_color_mapping=False)
    layer.metadata["histoexpr_color"] = color


def _limits(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    return (low, high) if high > low else (low, low + 1.0)


def _coloured_shapes(sdata, shapes_key, color, table_key) -> str | None:
    if shapes_key is not None:
        require_element(sdata, shapes_key, "shapes")
        if color is not None:  # fail before a window opens
            color_values(sdata, shapes_key, color, table_key=table_key)
        return shapes_key
    if color is None:
        return None
    for key in sorted(sdata.shapes):
        tables = _annotating_tables(sdata, key)
        if table_key is not None:
            tables = {k: t for k, t in tables.items() if k == table_key}
        if any(_has(table, color) for table in tables.values()):
            return key
    raise KeyError(f"No table annotating the shapes {sorted(sdata.shapes)} holds {color!r}; "
                   "pass shapes_key and a gene or obs column of its table.")


def _annotating_tables(sdata: SpatialData, shapes_key: str) -> dict[str, AnnData]:
    from spatialdata import get_element_annotators

    return {name: sdata.tables[name] for name in sorted(get_element_annotators(sdata, shapes_key))}


def _table_keys(table: AnnData) -> set[str]:
    attrs = table.uns.get("spatialdata_attrs", {})
    return {attrs.get("region_key"), attrs.get("instance_key")}


def _has(table: AnnData, color: str) -> bool:
    if color in table.obs.columns or color in table.var_names:
        return True
    key, _, column = color.partition(":")
    frame = table.obsm.get(key) if column else None
    return isinstance(frame, pd.DataFrame) and column in frame.columns


def _values_of(shapes, table: AnnData, color: str, shapes_key: str) -> pd.Series:
    if color in table.obs.columns or color in table.var_names:
        return _shape_values(shapes, table, color, None, shapes_key)
    key, _, column = color.partition(":")
    instance_key = table.uns["spatialdata_attrs"]["instance_key"]
    values = pd.Series(table.obsm[key][column].to_numpy(),
                       index=table.obs[instance_key].to_numpy())
    return values.reindex(shapes.index)


def _chosen(sdata: SpatialData, kind: str, keys: Sequence[str] | None) -> list[str]:
    if keys is None:
        return sorted(getattr(sdata, kind))
    keys = [keys] if isinstance(keys, str) else list(keys)
    for key in keys:
        require_element(sdata, key, kind)
    return keys


def _style_transcripts(layer: Layer) -> None:
    scale = float(np.sqrt(abs(np.linalg.det(layer.affine.affine_matrix[-3:-1, -3:-1]))))
    layer.size = TRANSCRIPT_SIZE_UM / scale
    columns = layer.metadata.get("_columns_df")
    if columns is not None and "gene" in columns.columns:
        layer.features = pd.DataFrame({"gene": columns["gene"].astype("category").to_numpy()})
        layer.face_color = "gene"
