"""hx.settings: defaults, validation on assignment, and effects."""

from __future__ import annotations

import logging

import pytest

import histoexpr as hx


def test_device_defaults_to_best_available():
    import torch

    hx.settings.device = None
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if expected == "cpu" and torch.backends.mps.is_available():
        expected = "mps"
    assert hx.settings.device == expected


def test_device_accepts_cpu_and_rejects_nonsense():
    hx.settings.device = "cpu"
    assert hx.settings.device == "cpu"
    with pytest.raises(ValueError, match="not a device"):
        hx.settings.device = "gpu"
    with pytest.raises(ValueError, match="not a device"):
        hx.settings.device = "cuda:x"
    assert hx.settings.device == "cpu"  # a rejected value leaves the old one


def test_device_refuses_missing_accelerator():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(ValueError, match="no cuda device"):
        hx.settings.device = "cuda"


@pytest.mark.parametrize(
    ("name", "bad", "good"),
    [
        ("seed", -1, 7),
        ("seed", 1.5, 0),
        ("seed", True, 3),
        ("progress_bar", "yes", False),
        ("verbosity", 5, 3),
        ("n_workers", -2, 2),
        ("n_workers", 10_000, 0),
        ("n_workers", "auto", None),
        ("precision", "float16", "bf16"),
        ("precision", None, "fp32"),
        ("max_memory", "lots", 2**30),
        ("max_memory", -5, None),
    ],
)
def test_values_are_validated_on_assignment(name, bad, good):
    before = getattr(hx.settings, name)
    with pytest.raises(ValueError, match=f"settings.{name}"):
        setattr(hx.settings, name, bad)
    assert getattr(hx.settings, name) == before
    setattr(hx.settings, name, good)
    assert getattr(hx.settings, name) == good


def test_verbosity_sets_the_logger_level():
    hx.settings.verbosity = 3
    assert logging.getLogger("histoexpr").level == logging.DEBUG
    hx.settings.verbosity = 0
    assert logging.getLogger("histoexpr").level == logging.ERROR


def test_seed_everything_uses_the_settings_seed():
    import numpy as np

    from histoexpr._core.seeds import seed_everything

    hx.settings.seed = 11
    first = seed_everything(None).random(3)
    second = seed_everything(None).random(3)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, seed_everything(12).random(3))


def test_repr_names_every_option():
    text = repr(hx.settings)
    for name in ("device", "seed", "progress_bar", "verbosity", "n_workers", "precision",
                 "max_memory"):
        assert name in text


def test_gpu_defaults_keep_cpu_runs_as_they_were():
    from histoexpr._core.devices import loader_options, resolve_precision

    assert hx.settings.precision == "auto" and hx.settings.n_workers is None
    cpu = resolve_precision("cpu")
    assert cpu.name == "fp32" and cpu.dtype is None and cpu.scaler is None
    assert loader_options("cpu") == {"num_workers": 0, "persistent_workers": False,
                                     "pin_memory": False}
    hx.settings.precision = "bf16"  # forced: autocast on the CPU too
    assert resolve_precision("cpu").dtype is not None
    hx.settings.n_workers = 3
    assert loader_options("cpu")["num_workers"] == 3
    assert loader_options("cpu", reads_images=False)["num_workers"] == 0


# ------------------------------------------------------------------------------------------------
# logging as scanpy does it: named levels, timed steps, per-item chatter at debug


@pytest.fixture
def log_lines():
    """The lines the ``histoexpr`` logger emits (a list, appended to as they come)."""
    import io

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("histoexpr")
    logger.addHandler(handler)
    lines = type("Lines", (), {"get": lambda self: stream.getvalue().splitlines()})()
    yield lines
    logger.removeHandler(handler)


def test_verbosity_takes_scanpy_names_and_numbers():
    for name, number, level in [("error", 0, logging.ERROR), ("warning", 1, logging.WARNING),
                                ("info", 2, logging.INFO), ("debug", 3, logging.DEBUG)]:
        hx.settings.verbosity = name
        assert hx.settings.verbosity == number and hx.settings.verbosity.name == name
        assert logging.getLogger("histoexpr").level == level
        hx.settings.verbosity = number
        assert hx.settings.verbosity.name == name
    hx.settings.verbosity = "DEBUG"  # any case
    assert hx.settings.verbosity == 3
    with pytest.raises(ValueError, match="'error' \\(0\\), 'warning' \\(1\\), 'info' \\(2\\)"):
        hx.settings.verbosity = "loud"
    assert hx.settings.verbosity == 3  # a rejected value leaves the old one
    assert "verbosity=debug" in repr(hx.settings)


def test_a_step_logs_its_time_once_and_items_log_at_debug(log_lines):
    from histoexpr._core.logs import each_item, logged_step, logger

    @logged_step("inner step")
    def inner():
        logger.info("inner detail")

    @logged_step(lambda n: f"outer step of {n} slides")
    def outer(n):
        for i in range(n):
            with each_item():
                logger.info("slide %d", i)
                inner()
        logger.info("outer summary")
        return n

    hx.settings.verbosity = "info"
    assert outer(3) == 3
    assert log_lines.get() == ["outer step of 3 slides", "outer summary", "    finished (0:00:00)"]
    hx.settings.verbosity = "debug"
    before = len(log_lines.get())
    outer(1)
    assert log_lines.get()[before:] == ["outer step of 1 slides", "slide 0", "inner step",
                                        "inner detail", "    finished (0:00:00)",
                                        "outer summary", "    finished (0:00:00)"]
    inner()  # called on its own, the inner step logs at info
    hx.settings.verbosity = "info"
    before = len(log_lines.get())
    inner()
    assert log_lines.get()[before:] == ["inner step", "inner detail", "    finished (0:00:00)"]


def test_outer_bars_stay_and_inner_bars_go():
    from histoexpr._core.logs import progress

    hx.settings.progress_bar = True
    outer = progress(range(2), desc="slides")
    inner = progress(range(3), desc="batches")
    assert outer.leave and not inner.leave
    inner.close()
    outer.close()
    assert progress(range(1), desc="again").leave
    hx.settings.progress_bar = False
    assert progress(range(1), desc="hidden").disable
def test_max_memory_reads_units():
    hx.settings.max_memory = "16 GiB"
    assert hx.settings.max_memory == 16 * 2**30
    hx.settings.max_memory = "8GB"
    assert hx.settings.max_memory == 8 * 10**9
