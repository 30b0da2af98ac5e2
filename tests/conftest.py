"""Shared fixtures: small in-memory sections and the path of the real data sets."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

import histoexpr as hx

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HISTOEXPR_SHARED_DATA") or os.environ.get("HISTOEXPR_DATA_DIR")
            or REPO.parent / "shared" / "data")


def pytest_configure(config):
    """Under pytest-xdist each worker gets one torch thread: two workers share two cores, and
    the small networks of the tests run fastest (and steadiest) that way."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Leave out the docstring examples that cannot run as written (DOCTESTS_KEPT_OUT), mark
    ``slow`` the tests measured slow (tests/_slow.py), and skip tests marked ``realdata`` with a
    clear reason where the data folder is absent."""
    from _pytest.doctest import DoctestItem
    from _slow import DOCTESTS_KEPT_OUT, SLOW, SLOW_DOCTESTS

    kept_out = [item for item in items
                if isinstance(item, DoctestItem) and item.name in DOCTESTS_KEPT_OUT]
    if kept_out:
        config.hook.pytest_deselected(items=kept_out)
        items[:] = [item for item in items if item not in kept_out]
    for item in items:
        if isinstance(item, DoctestItem):
            if item.name in SLOW_DOCTESTS:
                item.add_marker(pytest.mark.slow)
        elif f"{item.path.name}::{item.originalname}" in SLOW:
            item.add_marker(pytest.mark.slow)
    if DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"real data folder {DATA} is absent (set HISTOEXPR_SHARED_DATA)")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder of real data sets (``../shared/data``)."""
    return DATA


@pytest.fixture(autouse=True)
def _quiet_settings():
    """Tests run without progress bars and restore the settings they change."""
    saved = (hx.settings._device, hx.settings.seed, hx.settings.progress_bar,
             hx.settings.verbosity, hx.settings.n_workers, hx.settings.precision,
             hx.settings.max_memory)
    hx.settings.progress_bar = False
    yield
    (hx.settings._device, hx.settings.seed, hx.settings.progress_bar,
     hx.settings.verbosity, hx.settings.n_workers, hx.settings.precision,
     hx.settings.max_memory) = saved
    hx.settings.verbosity = saved[3]


def copy_section(sdata):
    """A deep copy of ``sdata``: its own arrays, tables, shapes, points and attrs."""
    import copy

    import spatialdata

    out = spatialdata.deepcopy(sdata)
    out.attrs = copy.deepcopy(dict(sdata.attrs))
    return out


#: sections built once per test run (key: the builder and its arguments); tests get copies
_BUILT: dict = {}


def _built_once(builder, *args, **kwargs):
    key = (builder.__name__, args, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if key not in _BUILT:
        _BUILT[key] = builder(*args, **kwargs)
    return _BUILT[key]


def _build_disk_section(size_px: int, mpp: float, radius_frac: float, seed: int,
                        multiscale: bool):
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size_px, :size_px]
    centre = (size_px - 1) / 2
    inside = (yy - centre) ** 2 + (xx - centre) ** 2 <= (radius_frac * size_px) ** 2
    image = np.full((size_px, size_px, 3), 245, dtype=np.uint8)
    image[inside] = (230, 150, 200)
    dots = inside & (rng.random(inside.shape) < 0.02)
    image[dots] = (80, 40, 140)
    noise = rng.integers(-5, 6, image.shape)
    image = np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)
    element = Image2DModel.parse(
        np.moveaxis(image, -1, 0), dims=("c", "y", "x"), c_coords=["r", "g", "b"],
        scale_factors=[2, 2] if multiscale else None,
        transformations={"global": Scale([mpp, mpp], axes=("y", "x"))},
    )
    return SpatialData(images={"he": element})


def without_pixel_size(image):
    """The full-resolution pixels of an image element, parsed without a pixel size.

    SpatialData gives them the identity to ``"global"``, which histoexpr must not read as
    1 um/px without a word.
    """
    from spatialdata.models import Image2DModel

    level = image["scale0"]["image"] if hasattr(image, "children") else image
    return Image2DModel.parse(np.asarray(level.values), dims=("c", "y", "x"))


def make_disk_section(size_px: int = 400, mpp: float = 0.5, radius_frac: float = 0.35,
                      seed: int = 0, multiscale: bool = False):
    """An RGB 'H&E' section: a pink disk of tissue with dark dots on a white background.

    The geometry is exact, so tests can compare tissue masks and tile counts with it: the disk's
    centre is the image centre and its radius ``radius_frac * size_px`` pixels. Built once per
    test run for each set of arguments; each call returns a deep copy of its own.
    """
    return copy_section(_built_once(_build_disk_section, size_px, mpp, radius_frac, seed,
                                    multiscale))


def synthetic_copy(**kwargs):
    """``hx.datasets.synthetic_section(**kwargs)``, built once per test run: a deep copy each call.

    For tests that need a synthetic section but do not test ``synthetic_section`` itself (its own
    tests build theirs, to check that a second build gives the same section).
    """
    return copy_section(_built_once(hx.datasets.synthetic_section, **kwargs))


def synthetic_cohort_copy(n_slides: int, **kwargs):
    """``hx.datasets.synthetic_cohort(n_slides, **kwargs)``, built once per test run: a copy each
    call (its sections deep-copied, its bulk table too)."""
    built = _built_once(hx.datasets.synthetic_cohort, n_slides, **kwargs)
    return hx.io.Cohort({name: copy_section(sdata) for name, sdata in built.items()},
                        built.bulk.copy())


@pytest.fixture(scope="session")
def synthetic():
    """``synthetic(**kwargs)``: a copy of ``hx.datasets.synthetic_section(**kwargs)``, built once
    (see synthetic_copy); kept for the whole test run, so module-scoped fixtures can use it too."""
    return synthetic_copy


@pytest.fixture
def disk_section():
    """A 400 x 400 px RGB section at 0.5 um/px with a disk of tissue (see make_disk_section)."""
    return make_disk_section()


@pytest.fixture(scope="session")
def synthetic_cohort():
    """``synthetic_cohort(n_slides, **kwargs)``: a copy of the once-built
    ``hx.datasets.synthetic_cohort(n_slides, **kwargs)`` (see synthetic_cohort_copy)."""
    return synthetic_cohort_copy


@pytest.fixture(scope="module")
def two_sections(synthetic):
    """Two small synthetic sections whose H&E is under ``"img"`` (as read with image_key="img")."""
    sections = {}
    for seed, name in enumerate("ab"):
        section = synthetic(seed=seed, size_um=300, spot_pitch_um=40, spot_diameter_um=30)
        section.images["img"] = section.images["he"]
        del section.images["he"]
        sections[name] = section
    return sections


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder``: its relative path and the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny_demo(monkeypatch):
    """``histoexpr demo`` cut down to one figure and its summary; returns its jobs function."""
    from histoexpr import _demo

    def jobs(report, scale, seed):
        report.figure("tiles.png", lambda: __import__("matplotlib.pyplot").pyplot.figure())

    monkeypatch.setattr(_demo, "_run_jobs", jobs)
    monkeypatch.setattr(_demo, "_summary", lambda metrics, figures: "# a tiny demo\n")
    return jobs


def dense_calls(monkeypatch) -> list[tuple[int, int]]:
    """The shapes of every CSR matrix densified from here on (a spy on ``toarray``)."""
    import scipy.sparse

    calls: list[tuple[int, int]] = []
    toarray = scipy.sparse.csr_matrix.toarray

    def spy(self, *args, **kwargs):
        calls.append(self.shape)
        return toarray(self, *args, **kwargs)

    monkeypatch.setattr(scipy.sparse.csr_matrix, "toarray", spy)
    return calls

