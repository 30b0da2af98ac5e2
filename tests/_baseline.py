"""Plots compared with stored baseline images, with a tolerance (as scanpy's ``check_same_image``
and squidpy's ``PlotTester`` do).

A baseline test is one short function::

    def test_labels_image(tmp_path, baseline_section):
        ax = baseline_axes()
        hx.pl.labels(baseline_section, "regions", ax=ax)
        check_same_image(ax, "labels", tmp_path)

``check_same_image`` saves the figure (4 x 4 inches at 60 dpi, a fixed style, so baselines stay
small and the same on every machine) and compares it with ``tests/_images/<name>.png``; a
failure names the difference image it wrote. To make or refresh baselines, run the tests with
``HISTOEXPR_MAKE_BASELINES=1`` (e.g. ``HISTOEXPR_MAKE_BASELINES=1 .venv/bin/pytest
tests/pl/test_plot_images.py``), look at the new PNGs, and commit them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
from matplotlib.testing.compare import compare_images

BASELINES = Path(__file__).resolve().parent / "_images"
FIGSIZE = (4.0, 4.0)
DPI = 60
#: root-mean-square difference (0-255 scale) allowed for font and antialiasing differences
TOLERANCE = 5.0
STYLE = {
    "font.family": "DejaVu Sans", "font.size": 8.0, "text.hinting": "none",
    "figure.dpi": DPI, "savefig.dpi": DPI, "image.interpolation": "nearest",
}
MAKE_BASELINES = os.environ.get("HISTOEXPR_MAKE_BASELINES", "") not in ("", "0")


def baseline_axes():
    """Fresh axes in the baseline figure size and style."""
    with matplotlib.rc_context(STYLE):
        _, ax = plt.subplots(figsize=FIGSIZE)
    return ax


def check_same_image(ax_or_fig, name: str, tmp_dir: Path, *, tol: float = TOLERANCE) -> None:
    """Save the figure of ``ax_or_fig`` and compare it with the baseline ``_images/<name>.png``."""
    figure = getattr(ax_or_fig, "figure", ax_or_fig)
    actual = Path(tmp_dir) / f"{name}.png"
    with matplotlib.rc_context(STYLE):
        figure.savefig(actual, dpi=DPI)
    plt.close(figure)
    expected = BASELINES / f"{name}.png"
    if MAKE_BASELINES:
        BASELINES.mkdir(exist_ok=True)
        shutil.copyfile(actual, expected)
        return
    if not expected.exists():
        pytest.fail(f"No baseline image {expected}; make it with HISTOEXPR_MAKE_BASELINES=1 "
                    f"pytest {os.environ.get('PYTEST_CURRENT_TEST', '').split('::')[0]}")
    failure = compare_images(str(expected), str(actual), tol=tol, in_decorator=True)
    if failure is not None:
        pytest.fail(f"{name}.png differs from its baseline by RMS {failure['rms']:.2f} > {tol}; "
                    f"the difference is in {failure['diff']}. If the change is intended, remake "
                    "the baseline with HISTOEXPR_MAKE_BASELINES=1.")
