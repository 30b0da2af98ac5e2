"""Every public ``overwrite=`` takes True or False only: a string would replace what it should keep.

The public functions (and methods) are found by introspection, so a new one is covered without
being listed: each is called with ``overwrite="no"`` and placeholder data, and must refuse it
first, with the fix, before it looks at the data or writes anything.
"""

from __future__ import annotations

import inspect

import pytest
from _catalogue import bad_input

import histoexpr as hx

ROOMS = ("io", "pp", "tl", "pl", "datasets")


def _with_overwrite():
    found = {}
    for room in ROOMS:
        module = getattr(hx, room)
        for name in module.__all__:
            obj = getattr(module, name)
            members = ([(f"{name}.{m}", getattr(obj, m)) for m in vars(obj)
                        if not m.startswith("_") and callable(getattr(obj, m))]
                       if inspect.isclass(obj) else [(name, obj)])
            for label, function in members:
                try:
                    parameters = inspect.signature(function).parameters
                except (TypeError, ValueError):
                    continue
                if "overwrite" in parameters:
                    found[f"hx.{room}.{label}"] = function
    return found


FUNCTIONS = _with_overwrite()


def test_the_public_functions_with_overwrite_are_found():
    assert {"hx.pp.tile", "hx.tl.predict", "hx.io.save_model", "hx.tl.pretrain",
            "hx.datasets.synthetic_slide_cohort"} <= set(FUNCTIONS)


@bad_input("data lost", "`overwrite=\"no\"` or `\"False\"` (a string from a configuration file "
           "or a command line) to any public function: a non-empty string is true, so it replaced "
           "what it was meant to keep",
           says="TypeError: overwrite must be True or False, got 'no' (str); pass "
           "overwrite=True or overwrite=False",
           match=r"overwrite must be True or False, got .*; pass overwrite=True or "
           r"overwrite=False",
           fix="pass True or False")
@pytest.mark.parametrize("label", sorted(FUNCTIONS))
@pytest.mark.parametrize("value", ["no", "False", 0, None])
def test_overwrite_must_be_a_bool(label, value):
    function = FUNCTIONS[label]
    parameters = inspect.signature(function).parameters
    required = [p for p in parameters.values()
                if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keywords = {p.name: None for p in parameters.values()
                if p.default is inspect.Parameter.empty and p.kind is p.KEYWORD_ONLY}
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        function(*([None] * len(required)), **keywords, overwrite=value)
