"""The sections a tl step was given, by name: one rule for every model and for pretraining."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spatialdata import SpatialData

ACCEPTED = ("a SpatialData, a non-empty list of them, or a mapping of them by name (e.g. a "
            "dict or an hx.io.Cohort)")


def as_sections(data: Any) -> dict[str, SpatialData]:
    """``data`` as a dict of sections by name.

    The one naming rule: a mapping keeps its keys (as strings); sections given without names
    (one SpatialData, or a list or tuple of them) are named by position, ``"section_0"``,
    ``"section_1"``, ... Raises a ``TypeError`` naming the accepted inputs for no section and for
    anything else.
    """
    from spatialdata import SpatialData

    if isinstance(data, SpatialData):
        return {"section_0": data}
    if isinstance(data, Mapping):
        sections = {str(k): v for k, v in data.items()}
    elif isinstance(data, list | tuple):
        sections = {f"section_{i}": s for i, s in enumerate(data)}
    else:
        raise TypeError(f"Expected {ACCEPTED}; got a {type(data).__name__}.")
    if not sections:
        raise TypeError(f"No section given: pass {ACCEPTED}.")
    for name, section in sections.items():
        if not isinstance(section, SpatialData):
            raise TypeError(f"Section {name!r} is a {type(section).__name__}, not a "
                            f"SpatialData; pass {ACCEPTED}.")
    return sections


def check_no_copies(sections: Mapping[str, Any], group_of: Mapping[str, str]) -> None:
    """Refuse the same image under two names in different groups of a cross-validation.

    A fold would then train on the copy of a section it scores. Images are compared by their
    fingerprints (:func:`histoexpr._core.image_facts.image_fingerprint`: shape, pixel size, offset
    and sampled pixels; a few chunks read per image). ``sections`` maps names to SpatialData (a
    cohort opens each slide lazily).
    """
    from .._core.image_facts import image_fingerprint
    from .._core.logs import each_item

    seen: dict[str, str] = {}
    with each_item():  # opening each slide of a cohort is per-slide chatter (debug)
        for name, sdata in sections.items():
            for key in sdata.images:
                fingerprint = image_fingerprint(sdata, key)
                other = seen.setdefault(fingerprint, name)
                if other != name and group_of[other] != group_of[name]:
                    raise ValueError(
                        f"Sections {other!r} and {name!r} hold the same image ({key!r}, "
                        f"fingerprint {fingerprint}) in different groups ({group_of[other]!r}, "
                        f"{group_of[name]!r}): a fold would train on the copy of a section it "
                        "scores. Drop one copy, or give both the same group (groups=).")
