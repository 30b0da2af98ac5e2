"""The one rule that tells an RGB (H&E) image from a fluorescence one: its channels' names."""

from __future__ import annotations

import pytest

from histoexpr._core.image_facts import channel_kind, is_brightfield, stain_of


@pytest.mark.parametrize(("channels", "kind", "brightfield"), [
    (["r", "g", "b"], "brightfield", True),
    (["R", "G", "B"], "brightfield", True),
    (["Red", "Green", "Blue"], "brightfield", True),
    (["DAPI", "CD3", "CD8"], "fluorescence", False),  # three stains are no H&E
    (["DAPI"], "fluorescence", False),
    (["DAPI", "PolyT", "Cellbound1", "Cellbound2"], "fluorescence", False),
    (["b", "g", "r"], "fluorescence", False),  # not the colour channels in order
    # names that say nothing: the count decides, as before channels were named
    (["c0", "c1", "c2"], None, True),
    (["0", "1", "2"], None, True),
    (["Channel 0", "Channel:0:1", "C:2"], None, True),
    (["Brightfield", "Brightfield", "Brightfield"], None, True),
    (["c0"], None, False),
    (["c0", "c1", "c2", "c3"], None, False),
    ([], None, False),
])
def test_the_channel_names_decide_and_unnamed_channels_keep_the_count(channels, kind,
                                                                       brightfield):
    assert channel_kind(channels) == kind
    assert is_brightfield(channels) is brightfield
    assert stain_of(channels) == ("he" if brightfield else "fluorescence")


def test_a_count_alone_keeps_the_count_rule():
    assert stain_of(3) == "he" and is_brightfield(3)
    assert stain_of(1) == stain_of(4) == "fluorescence"
