"""The parameter schema: parsing from every source, validation messages, infotext round trip."""

import dataclasses

import pytest

from asag_lib import params


def test_defaults_match_the_product_description():
    d = params.DEFAULTS
    assert (d.enabled, d.scale, d.layers, d.iterations) == (False, 1.5, "middle", 2)
    assert (d.start, d.end, d.hires, d.rescale, d.plan) == (0.0, 1.0, "both", 0.0, "rows")
    assert [f.name for f in dataclasses.fields(params.Settings)] == [p.name for p in params.PARAMS]


def test_float_parameters_have_float_defaults():
    # The API's infotext path casts with type(component.value): int defaults would break on "2.5".
    for param in params.PARAMS:
        if param.kind is float:
            assert isinstance(param.default, float), param.name


def test_positional_args_fill_in_order_and_missing_trailing_args_default():
    s = params.from_script_args([True, 2.0, "input.7-8", 3])
    assert (s.enabled, s.scale, s.layers, s.iterations, s.end) == (True, 2.0, "input.7-8", 3, 1.0)


def test_dict_in_slot_zero_wins_over_the_remaining_slots():
    # Forge fills the slots after a dict with UI defaults; the dict must win outright.
    s = params.from_script_args([{"enabled": True, "scale": 2.5, "layers": "middle"}, False, 1.5, "all"])
    assert (s.enabled, s.scale, s.layers) == (True, 2.5, "middle")


@pytest.mark.parametrize(("raw", "expected"), [("false", False), ("False", False), ("0", False), ("true", True),
                                               ("on", True), (1, True), (0, False)])
def test_strings_like_false_are_booleans(raw, expected):
    assert params.from_script_args([raw]).enabled is expected


@pytest.mark.parametrize(("args", "fragment"), [
    ([True, "abc"], "'scale'"),
    ([True, 25.0], "from 0 to 20"),
    ([True, 1.0, "input."], "'layers'"),
    ([True, 1.0, "middle", 2.5], "not an integer"),
    ([True, 1.0, "middle", 0], "from 1 to 20"),
    ([True, 1.0, "middle", 2, 0.001, 0.8, 0.2], "'start' (0.8) must not be after 'end' (0.2)"),
    ([True, 1.0, "middle", 2, 0.001, 0.0, 1.0, "sometimes"], "one of 'both', 'first', 'hires'"),
    (["maybe"], "'enabled'"),
    ([True, float("nan")], "'scale'"),
    ([True, True], "'scale'"),
    ([{"enabled": True, "scal": 2}], "unknown field(s) 'scal'; accepted: enabled, scale"),
])
def test_bad_values_name_the_field_and_the_accepted_values(args, fragment):
    with pytest.raises(ValueError) as info:
        params.from_script_args(args, source="API")
    assert fragment in str(info.value)
    assert str(info.value).startswith("ASAG API:")


def test_enumerations_accept_canonical_values_and_labels_case_insensitively():
    s = params.from_mapping({"hires": "Hires pass only", "plan": "RAW", "weak_pass": "separate"})
    assert (s.hires, s.plan, s.weak_pass) == ("hires", "raw", "separate")


def test_layer_specs_are_normalised():
    assert params.from_mapping({"layers": "  Input.7-8 ,MIDDLE "}).layers == "input.7-8, middle"


def test_overrides_from_p_attributes_win():
    class P:
        asag_scale = "3"
        asag_layers = "outputs"

    s = params.with_overrides(params.from_script_args([True, 1.0]), P())
    assert (s.scale, s.layers, s.enabled) == (3.0, "outputs", True)


def test_bad_override_names_the_source():
    class P:
        asag_iterations = "many"

    with pytest.raises(ValueError, match=r"ASAG X/Y/Z: invalid value 'many' for 'iterations'"):
        params.with_overrides(params.DEFAULTS, P())


def test_infotext_round_trip_restores_every_parameter():
    s = params.from_mapping({"enabled": True, "scale": 2.25, "layers": "input.7-8, middle", "iterations": 4,
                             "tolerance": 0.0001, "start": 0.1, "end": 0.9, "hires": "first", "rescale": 0.5,
                             "plan": "raw", "weak_pass": "separate"})
    text = params.to_infotext(s)
    assert all(key.startswith("ASAG ") for key in text)
    assert params.from_mapping(params.from_infotext(text)) == s


def test_infotext_values_never_look_like_sizes():
    text = params.to_infotext(params.from_mapping({"enabled": True}))
    assert not any(value.replace("x", "").isdigit() and "x" in value for value in text.values())


def test_infotext_without_asag_keys_means_disabled_and_bad_values_are_skipped():
    assert params.from_infotext({"Steps": "20"}) == {"enabled": False}
    values = params.from_infotext({"ASAG scale": "2", "ASAG iterations": "lots"})
    expected = {**dataclasses.asdict(params.DEFAULTS), "enabled": True, "scale": 2.0}
    del expected["iterations"]  # the bad value is skipped: the control keeps its current value
    del expected["telemetry"]  # a diagnostic switch with no infotext key: pasting leaves it alone
    assert values == expected


def test_infotext_writes_scale_non_defaults_and_the_defaults_version():
    s = params.from_mapping({"enabled": True, "scale": 2.0, "start": 0.2})
    assert params.to_infotext(s) == {"ASAG scale": "2", "ASAG start": "0.2", "ASAG defaults": "1"}


def test_a_later_default_change_cannot_change_an_old_infotext(monkeypatch):
    old = params.to_infotext(params.from_mapping({"enabled": True}))
    monkeypatch.setitem(params.DEFAULTS_BY_VERSION, "2", {**params.DEFAULTS_BY_VERSION["1"], "iterations": 5})
    monkeypatch.setattr(params, "INFOTEXT_VERSION", "2")
    assert params.from_infotext(old)["iterations"] == 2  # read with version 1's defaults
    assert "ASAG iterations" not in old and old["ASAG defaults"] == "1"


def test_pasted_infotext_gets_every_key():
    fields = {"Steps": "20", "ASAG scale": "2"}
    params.fill_pasted_infotext("", fields)
    assert {params.infotext_key(p) for p in params.PARAMS if p.infotext} <= set(fields)
    untouched = {"Steps": "20"}
    params.fill_pasted_infotext("", untouched)
    assert untouched == {"Steps": "20"}
