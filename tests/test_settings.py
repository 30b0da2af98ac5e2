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

    from histoexpr._utils import seed_everything

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
    from histoexpr._devices import loader_options, resolve_precision

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


def test_max_memory_reads_units():
    hx.settings.max_memory = "16 GiB"
    assert hx.settings.max_memory == 16 * 2**30
    hx.settings.max_memory = "8GB"
    assert hx.settings.max_memory == 8 * 10**9
