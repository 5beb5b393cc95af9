"""X/Y/Z value parsing and validation (host-free part of the axes)."""

import pytest

from asag_lib import params
from asag_lib.hosts import xyz

P = params.PARAMS_BY_NAME


def test_every_parameter_has_an_axis_label_with_the_prefix():
    labels = [xyz.axis_label(p) for p in params.PARAMS if p.xyz]
    assert len(labels) == len(params.PARAMS)
    assert {"[ASAG] Enabled", "[ASAG] Scale", "[ASAG] Layers", "[ASAG] Iterations", "[ASAG] Start",
            "[ASAG] End"} <= set(labels)


@pytest.mark.parametrize(("param", "text", "expected"), [
    ("scale", "0, 1.5, 3", ["0", "1.5", "3"]),
    ("scale", "0-2 (+0.5)", ["0", "0.5", "1", "1.5", "2"]),
    ("scale", "1-3 [3]", ["1", "2", "3"]),
    ("iterations", "1-4", ["1", "2", "3", "4"]),
    ("iterations", "2-8 (+3)", ["2", "5", "8"]),
    ("tolerance", "1e-3, 0.01", ["1e-3", "0.01"]),
    ("layers", 'middle, "input.7-8,output.0", m0', ["middle", "input.7-8,output.0", "m0"]),
])
def test_values_expand_like_the_host(param, text, expected):
    assert xyz.parse_axis_values(P[param], text) == expected


@pytest.mark.parametrize(("param", "text", "fragment"), [
    ("scale", "1, abc", "'scale'"),
    ("iterations", "0-3", "from 1 to 20"),
    ("start", "0-1 (-0.5)", "never reaches its end"),
    ("layers", "middle, input.", "'layers'"),
])
def test_bad_values_fail_before_the_grid_with_a_clear_message(param, text, fragment):
    with pytest.raises(ValueError, match="X/Y/Z") as info:
        xyz.parse_axis_values(P[param], text)
    assert fragment in str(info.value)


def test_apply_sets_the_attribute_and_enables_asag():
    class Cell:
        pass

    cell = Cell()
    xyz.make_apply(P["scale"])(cell, "2.5", None)
    assert cell.asag_scale == 2.5 and cell.asag_enabled is True

    off = Cell()
    xyz.make_apply(P["enabled"])(off, "False", None)
    xyz.make_apply(P["scale"])(off, "2", None)
    assert off.asag_enabled is False  # an explicit Enabled axis value is not overridden


def test_confirm_rejects_bad_dropdown_values():
    with pytest.raises(ValueError, match="one of 'both', 'first', 'hires'"):
        xyz.make_confirm(P["hires"])(None, ["both", "never"])
    xyz.make_confirm(P["enabled"])(None, ["True", "False"])
