"""The one set of argument checks and the one rename shim (``histoexpr._core.validate``)."""

from __future__ import annotations

import inspect
import warnings
from typing import Literal

import numpy as np
import pytest

from histoexpr._core.validate import (
    check_choice,
    check_fraction,
    check_int,
    check_positive,
    renamed_parameters,
)


@pytest.mark.parametrize(("closed", "inside", "outside"), [
    ("neither", [0.01, 0.5, 0.99], [0.0, 1.0, -0.1, 1.5]),
    ("left", [0.0, 0.5, 0.99], [1.0, -0.1]),
    ("right", [0.01, 1.0], [0.0, 1.1]),
    ("both", [0.0, 1.0, np.float32(0.25)], [-1e-9, 1.0 + 1e-9, float("nan")]),
])
def test_check_fraction_follows_the_stated_interval(closed, inside, outside):
    for value in inside:
        assert check_fraction("f", value, closed=closed) == pytest.approx(float(value))
    interval = {"neither": "(0, 1)", "left": "[0, 1)", "right": "(0, 1]", "both": "[0, 1]"}
    for value in outside:
        with pytest.raises(ValueError) as error:
            check_fraction("val_fraction", value, closed=closed)
        message = str(error.value)
        # the parameter, the value, the allowed range and the fix
        assert "val_fraction" in message and repr(value) in message
        assert interval[closed] in message and "pass a value" in message


def test_check_fraction_refuses_non_numbers():
    for value in ("0.5", None, True):
        with pytest.raises(TypeError, match="min_tissue must be a number in"):
            check_fraction("min_tissue", value)
    with pytest.raises(ValueError, match="closed must be"):
        check_fraction("x", 0.5, closed="open")


def test_check_positive():
    assert check_positive("size_um", 3) == 3.0
    assert isinstance(check_positive("size_um", np.int64(3)), float)
    assert check_positive("smooth_um", 0, allow_zero=True) == 0.0
    with pytest.raises(ValueError, match=r"size_um must be a positive number in um \(size_um > 0\)"
                                         r", got 0"):
        check_positive("size_um", 0, unit="um")
    for bad in (-1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="must be a positive"):
            check_positive("lr", bad)
    with pytest.raises(ValueError, match=r"non-negative.*>= 0"):
        check_positive("strength", -0.1, allow_zero=True)
    with pytest.raises(TypeError, match="must be a positive number"):
        check_positive("mpp", "0.5")
    with pytest.raises(TypeError):
        check_positive("mpp", True)


def test_check_int():
    assert check_int("n_top", np.int64(5), minimum=1) == 5
    with pytest.raises(ValueError, match=r"n_top must be an integer in \[1, inf\], got 0"):
        check_int("n_top", 0, minimum=1)
    with pytest.raises(ValueError, match=r"\[-inf, 3\]"):
        check_int("k", 4, maximum=3)
    for bad in (5.0, True, "5"):
        with pytest.raises(TypeError, match="n_top must be an integer"):
            check_int("n_top", bad, minimum=1)


def test_check_choice_takes_the_literal_of_the_signature():
    Kind = Literal["auto", "he", "fluorescence"]
    assert check_choice("kind", "he", Kind) == "he"
    assert check_choice("kind", "b", ("a", "b")) == "b"
    with pytest.raises(ValueError, match=r"kind must be one of 'auto', 'he', 'fluorescence'; "
                                         r"got 'HE'\. Pass one of these, e.g\. kind='auto'"):
        check_choice("kind", "HE", Kind)


def _example(data, *, size_px: int = 1, stride_um: float | None = None, centres=None):
    return data, size_px, stride_um, centres


def test_renamed_parameters_keeps_old_names_working_with_a_future_warning():
    shimmed = renamed_parameters(size="size_px", centers="centres",
                                 stride=lambda kw: "stride_um")(_example)
    # help() shows only the new names
    assert list(inspect.signature(shimmed).parameters) == ["data", "size_px", "stride_um",
                                                           "centres"]
    assert shimmed.__doc__ == _example.__doc__ and shimmed.__name__ == "_example"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert shimmed(0, size_px=2, centres="spots") == (0, 2, None, "spots")
    with pytest.warns(FutureWarning, match="'centers' is deprecated.*use 'centres'"):
        assert shimmed(0, centers="spots") == (0, 1, None, "spots")
    with pytest.warns(FutureWarning, match="use 'stride_um'"):
        assert shimmed(0, stride=3.0) == (0, 1, 3.0, None)
    with pytest.raises(TypeError, match="got both 'size' .*and 'size_px'; pass only 'size_px'"):
        shimmed(0, size=2, size_px=2)


def test_renamed_parameters_refuses_a_wrong_declaration():
    with pytest.raises(TypeError, match="has no parameter 'nope'"):
        renamed_parameters(size="nope")(_example)
    with pytest.raises(TypeError, match="still has the old parameter 'size_px'"):
        renamed_parameters(size_px="centres")(_example)
