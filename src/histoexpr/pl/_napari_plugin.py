"""histoexpr's napari plugin (``napari.yaml``).

It contributes a reader of SpatialData ``.zarr`` stores and a dock widget that switches what
colours the spots or tiles and its colour range.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label

if TYPE_CHECKING:
    import napari

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """npe2 reader hook: :func:`read_section` for a SpatialData ``.zarr`` folder, else ``None``."""
    if isinstance(path, list):
        return None
    store = Path(path)
    is_store = store.suffix == ".zarr" and store.is_dir() and any(
        (store / name).exists() for name in ("zarr.json", ".zgroup", ".zattrs"))
    return read_section if is_store else None


def read_section(path: str) -> list[LayerData]:
    """Read the layers of a SpatialData store (as written by ``sdata.write``), in micrometres."""
    import spatialdata as sd

    from ._napari_layers import section_layers

    sdata = sd.read_zarr(path)
    return [layer.as_layer_data_tuple() for layer in section_layers(sdata)]


class ColorWidget(Container):
    """Switch what colours a spots/tiles layer (gene, prediction, attention...) and its range.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it when the widget is opened from the Plugins menu).

    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self.viewer = napari_viewer
        self.layer = ComboBox(label="layer", choices=self._layer_names)
        self.color = ComboBox(label="colour by", choices=self._color_names)
        self.low = FloatSpinBox(label="low", min=-1e12, max=1e12, step=0.01)
        self.high = FloatSpinBox(label="high", min=-1e12, max=1e12, step=0.01)
        self.message = Label(value="")
        super().__init__(widgets=[self.layer, self.color, self.low, self.high, self.message])
        self._syncing = False
        self.layer.changed.connect(self._on_layer)
        self.color.changed.connect(self._on_color)
        self.low.changed.connect(self._on_limits)
        self.high.changed.connect(self._on_limits)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._on_layer()

    def _layer_names(self, _widget=None) -> list[str]:
        return [layer.name for layer in self.viewer.layers
                if "histoexpr_choices" in layer.metadata]

    def _color_names(self, _widget=None) -> list[str]:
        layer = self._current()
        return [] if layer is None else list(layer.metadata["histoexpr_choices"])

    def _current(self):
        name = self.layer.value if hasattr(self, "layer") else None
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _refresh_layers(self, _event=None) -> None:
        self.layer.reset_choices()

    def _on_layer(self, _value=None) -> None:
        layer = self._current()
        self._syncing = True
        self.color.reset_choices()
        shown = None if layer is None else layer.metadata.get("histoexpr_color")
        if shown in self.color.choices:
            self.color.value = shown
        self._syncing = False
        if shown is None:  # an uncoloured layer takes the colour the widget shows
            self._on_color()
        else:
            self._show_limits(layer)

    def _on_color(self, _value=None) -> None:
        from ._napari_layers import color_layer

        layer = self._current()
        if self._syncing or layer is None or self.color.value is None:
            return
        color_layer(layer, self.color.value)
        self._show_limits(layer)

    def _show_limits(self, layer) -> None:
        numeric = layer is not None and layer.face_color_mode == "colormap"
        self.low.enabled = self.high.enabled = numeric
        self.message.value = "" if numeric or layer is None else "categories: no colour range"
        if numeric:
            self._syncing = True
            self.low.value, self.high.value = layer.face_contrast_limits
            self._syncing = False

    def _on_limits(self, _value=None) -> None:
        layer = self._current()
        if self._syncing or layer is None or layer.face_color_mode != "colormap":
            return
        if self.high.value <= self.low.value:
            self.message.value = "high must be above low"
            return
        self.message.value = ""
        layer.face_contrast_limits = (self.low.value, self.high.value)
        layer.refresh_colors(update_color_mapping=False)
