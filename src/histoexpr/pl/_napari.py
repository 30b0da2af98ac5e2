"""A napari viewer of a section, with its layers and the histoexpr colour widget docked.

The layers are built in :mod:`._napari_layers`; the widget and the reader of napari's plugin live in
:mod:`._napari_plugin`, which imports the layers but never this module (no cycle).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._napari_layers import _coloured_shapes, color_layer, section_layers

if TYPE_CHECKING:
    from napari import Viewer
    from spatialdata import SpatialData


def napari(
    sdata: SpatialData,
    shapes_key: str | None = None,
    *,
    color: str | None = None,
    table_key: str | None = None,
    images: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    points: Sequence[str] | None = None,
    cmap: str = "viridis",
    contrast_limits: tuple[float, float] | None = None,
    viewer: Viewer | None = None,
    show: bool = True,
) -> Viewer:
    """Open a section in napari, with spots or tiles coloured by a prediction, gene or annotation.

    Every layer is in micrometres (the elements' ``"global"`` coordinate system), so the image,
    label maps (tissue, predicted maps), transcripts and spots or tiles lie on top of each other.
    Images are shown as pyramids where they have levels. Two dock widgets come with the viewer:
    napari-spatialdata's element browser and histoexpr's colour widget, which switches the value
    shown on a spots/tiles layer and its colour range.

    Parameters
    ----------
    sdata
        The section.
    shapes_key
        The spots or tiles coloured by ``color``. Every shapes element is added; when ``None`` and
        ``color`` is given, the first one (by name) whose tables hold ``color`` is coloured.
    color
        What colours ``shapes_key``: a gene (``var_names``) or ``obs`` column of a table annotating
        it (predictions, attention, tissue fraction...), or ``"<obsm key>:<column>"`` for a column
        of a table's ``obsm`` DataFrame (e.g. per-tile predictions ``"abmil:ERBB2"``). ``None``
        draws the shapes uncoloured.
    table_key
        The annotating table to read ``color`` from; ``None`` takes the first (by name) that has it.
    images
        Images to show; ``None`` shows all.
    labels
        Label maps to show; ``None`` shows all.
    points
        Points elements (transcripts) to show, coloured by their ``gene`` column where they have
        one; ``None`` shows all.
    cmap
        Colormap of numeric colours.
    contrast_limits
        ``(low, high)`` of the colormap; ``None`` spans the values.
    viewer
        A viewer to add the layers to; ``None`` opens a new one.
    show
        Show the viewer's window (``False`` for scripts and tests).

    Returns
    -------
    The napari viewer; its layers are named after the elements.

    """
    if viewer is None:
        check_display()
    import napari as _napari

    if viewer is None:
        viewer = _napari.Viewer(title="histoexpr", show=show)
    coloured = _coloured_shapes(sdata, shapes_key, color, table_key)
    layers = section_layers(sdata, images=images, labels=labels, points=points)
    _dock_widgets(viewer, sdata)  # before the layers, so that napari-spatialdata tracks them
    for layer in layers:
        if layer.metadata.get("name") == coloured:
            color_layer(layer, color, table_key=table_key, cmap=cmap,
                        contrast_limits=contrast_limits)
        viewer.add_layer(layer)
    viewer.reset_view()
    return viewer


def _dock_widgets(viewer: Viewer, sdata: SpatialData) -> None:
    from napari.utils.events import EventedList
    from napari_spatialdata._sdata_widgets import SdataWidget

    from ._napari_plugin import ColorWidget

    viewer.window.add_dock_widget(SdataWidget(viewer, EventedList([sdata])), name="SpatialData",
                                  area="left")
    viewer.window.add_dock_widget(ColorWidget(viewer), name="histoexpr colours", area="right")


#: Qt platforms that draw without a display
_HEADLESS_QT = ("offscreen", "minimal", "vnc", "eglfs", "linuxfb")


def check_display() -> None:
    """Raise a clear error where a napari window cannot open (Linux without a display).

    Without a display, Qt aborts the whole Python process when a viewer is made (a remote
    Jupyter kernel dies with its unsaved work), so this is checked first: ``DISPLAY`` or
    ``WAYLAND_DISPLAY`` must be set, or ``QT_QPA_PLATFORM`` name a platform that needs none.
    """
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return
    platform = os.environ.get("QT_QPA_PLATFORM", "").split(":")[0].strip().lower()
    if platform in _HEADLESS_QT or os.environ.get("DISPLAY") or \
            os.environ.get("WAYLAND_DISPLAY"):
        return
    raise RuntimeError(
        "hx.pl.napari needs a display, and this machine has none (neither DISPLAY nor "
        "WAYLAND_DISPLAY is set): opening a viewer would abort the Python process. Run under a "
        "virtual display (xvfb-run -a python script.py), or save the section "
        "(sdata.write('section.zarr')) and open it in napari on a machine with a screen; "
        "hx.pl.spatial draws without one.")

