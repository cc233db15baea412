"""ProfileSet / InputSpec validation, the union envelope, and the declared profile sets.

Pure logic, no Triton or GPU: ``python -m pytest tests/test_spec.py -q``.
"""

import pytest

from llmprofiles.profiles.sets import MULTI, PROFILE_SETS, SINGLE
from llmprofiles.profiles.spec import InputSpec, ProfileSet, ShapeRange

DECODE = ShapeRange((1, 1), (1, 1), (1, 1))
PREFILL = ShapeRange((1, 1), (1, 256), (1, 512))


def two_profile_set(*inputs: InputSpec, names=("decode", "prefill")) -> ProfileSet:
    return ProfileSet(names, inputs)


# --- InputSpec rejections -------------------------------------------------------------


def test_empty_profiles_list_raises():
    with pytest.raises(ValueError, match=r"input 'input_ids': profiles is empty; declare at least one profile"):
        InputSpec("input_ids", profiles=())


def test_profiles_given_as_list_raises_type_error():
    with pytest.raises(TypeError, match=r"input 'input_ids': profiles must be a tuple, got list"):
        InputSpec("input_ids", profiles=[DECODE])


def test_neither_profiles_nor_shape_raises():
    with pytest.raises(ValueError, match=r"input 'input_ids': needs profiles or a single-range shape"):
        InputSpec("input_ids")


def test_min_below_one_raises_naming_profile_input_dim_and_value():
    bad = ShapeRange((1, 0), (1, 4), (1, 8))
    with pytest.raises(ValueError) as e:
        InputSpec("input_ids", profiles=(DECODE, bad))
    assert str(e.value) == "input 'input_ids', profile 1: min_shape[1] = 0, must be >= 1"


def test_negative_min_in_first_dim_raises():
    bad = ShapeRange((-2, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match=r"input 'position_ids', profile 0: min_shape\[0\] = -2, must be >= 1"):
        InputSpec("position_ids", profiles=(bad,))


def test_opt_above_max_raises_naming_min_opt_max():
    bad = ShapeRange((1, 1), (1, 600), (1, 512))
    with pytest.raises(ValueError) as e:
        InputSpec("input_ids", profiles=(DECODE, bad))
    assert str(e.value) == (
        "input 'input_ids', profile 1: dim 1 breaks min <= opt <= max (min 1, opt 600, max 512)"
    )


def test_opt_below_min_raises():
    bad = ShapeRange((1, 8), (1, 4), (1, 16))
    with pytest.raises(ValueError, match=r"profile 0: dim 1 breaks min <= opt <= max \(min 8, opt 4, max 16\)"):
        InputSpec("input_ids", profiles=(bad,))


def test_min_above_max_raises():
    bad = ShapeRange((4, 1), (4, 1), (2, 1))
    with pytest.raises(ValueError, match=r"profile 0: dim 0 breaks min <= opt <= max \(min 4, opt 4, max 2\)"):
        InputSpec("input_ids", profiles=(bad,))


def test_rank_differing_between_profiles_raises():
    rank3 = ShapeRange((1, 1, 1), (1, 1, 1), (1, 1, 1))
    with pytest.raises(ValueError) as e:
        InputSpec("input_ids", profiles=(DECODE, rank3))
    assert str(e.value) == (
        "input 'input_ids', profile 1: min_shape [1, 1, 1] has rank 3, "
        "expected rank 2 like the other shapes of this input"
    )


def test_rank_differing_within_one_profile_raises_naming_the_field():
    bad = ShapeRange((1, 1), (1, 4), (1, 8, 1))
    with pytest.raises(ValueError, match=r"input 'input_ids', profile 0: max_shape \[1, 8, 1\] has rank 3, "
                                         r"expected rank 2"):
        InputSpec("input_ids", profiles=(bad,))


def test_non_int_dims_raise_type_error():
    bad = ShapeRange((1, 1), (1, 2.5), (1, 8))
    with pytest.raises(TypeError, match=r"input 'input_ids', profile 0: opt_shape must be a tuple of ints, "
                                        r"got \(1, 2\.5\)"):
        InputSpec("input_ids", profiles=(bad,))


def test_list_dims_raise_type_error():
    bad = ShapeRange([1, 1], (1, 1), (1, 1))
    with pytest.raises(TypeError, match=r"min_shape must be a tuple of ints, got \[1, 1\]"):
        InputSpec("input_ids", profiles=(bad,))


def test_profiles_and_single_range_shape_for_same_input_raises():
    with pytest.raises(ValueError) as e:
        InputSpec("input_ids", profiles=(DECODE, PREFILL), shape=PREFILL)
    assert "input 'input_ids': give either profiles or a single-range shape, not both" in str(e.value)
    assert "profiles already hold the shape ranges" in str(e.value)


def test_single_range_shape_is_validated_too():
    with pytest.raises(ValueError, match=r"input 'mask', profile 0: min_shape\[1\] = 0, must be >= 1"):
        InputSpec("mask", shape=ShapeRange((1, 0), (1, 1), (1, 1)))


# --- ProfileSet rejections ------------------------------------------------------------


def test_profiled_inputs_with_different_profile_counts_raise():
    with pytest.raises(ValueError) as e:
        two_profile_set(
            InputSpec("input_ids", profiles=(DECODE, PREFILL)),
            InputSpec("position_ids", profiles=(PREFILL,)),
        )
    msg = str(e.value)
    assert "profiled inputs declare different numbers of profiles" in msg
    assert "{'input_ids': 2, 'position_ids': 1}" in msg
    assert "every profiled input must declare the same number" in msg


def test_more_names_than_profiles_raises():
    with pytest.raises(ValueError) as e:
        ProfileSet(("decode", "prefill", "long"), (InputSpec("input_ids", profiles=(DECODE, PREFILL)),))
    assert str(e.value) == "3 profile names ['decode', 'prefill', 'long'] for 2 declared profiles"


def test_fewer_names_than_profiles_raises():
    with pytest.raises(ValueError, match=r"1 profile names \['decode'\] for 2 declared profiles"):
        ProfileSet(("decode",), (InputSpec("input_ids", profiles=(DECODE, PREFILL)),))


def test_two_names_for_only_unprofiled_inputs_raises():
    # With no profiled input there is exactly one profile.
    with pytest.raises(ValueError, match=r"2 profile names \['a', 'b'\] for 1 declared profiles"):
        ProfileSet(("a", "b"), (InputSpec("input_ids", shape=PREFILL),))


def test_empty_names_raises():
    with pytest.raises(ValueError, match="profile set has no profile names"):
        ProfileSet((), (InputSpec("input_ids", profiles=(DECODE,)),))


def test_duplicate_names_raise():
    with pytest.raises(ValueError, match=r"profile names must be unique, got \['decode', 'decode'\]"):
        two_profile_set(InputSpec("input_ids", profiles=(DECODE, PREFILL)), names=("decode", "decode"))


@pytest.mark.parametrize("name", ["auto", "", "0", "-1", "12"])
def test_reserved_or_empty_name_raises(name):
    with pytest.raises(ValueError, match=f"profile name {name!r} is reserved or empty"):
        ProfileSet((name,), (InputSpec("input_ids", profiles=(PREFILL,)),))


def test_non_string_name_raises_type_error():
    with pytest.raises(TypeError, match="profile name 1 must be a str, got int"):
        ProfileSet((1,), (InputSpec("input_ids", profiles=(PREFILL,)),))


# --- inputs without profiles ----------------------------------------------------------


def test_input_without_profiles_reuses_its_shape_in_every_profile():
    mask = ShapeRange((1, 4), (1, 4), (1, 4))
    ps = two_profile_set(InputSpec("input_ids", profiles=(DECODE, PREFILL)), InputSpec("mask", shape=mask))
    assert len(ps) == 2
    assert ps.ranges(0) == {"input_ids": DECODE, "mask": mask}
    assert ps.ranges(1) == {"input_ids": PREFILL, "mask": mask}
    assert ps.inputs[1].range_for(0) is mask and ps.inputs[1].range_for(1) is mask


def test_unprofiled_input_constrains_first_fit_in_every_profile():
    mask = ShapeRange((1, 4), (1, 4), (1, 4))
    ps = two_profile_set(InputSpec("input_ids", profiles=(DECODE, PREFILL)), InputSpec("mask", shape=mask))
    assert ps.first_fit({"input_ids": (1, 1), "mask": (1, 4)}) == 0
    assert ps.first_fit({"input_ids": (1, 100), "mask": (1, 4)}) == 1
    assert ps.first_fit({"input_ids": (1, 1), "mask": (1, 5)}) is None


# --- union envelope -------------------------------------------------------------------


def test_envelope_of_multi_spans_decode_and_prefill_with_decode_opt():
    env = MULTI.envelope()
    assert set(env) == {"input_ids", "position_ids"}
    for r in env.values():
        assert (r.min, r.opt, r.max) == ((1, 1), (1, 1), (1, 512))


def test_envelope_takes_elementwise_min_of_mins_and_max_of_maxes():
    a = ShapeRange((2, 8), (4, 16), (4, 64))
    b = ShapeRange((1, 32), (8, 32), (16, 32))
    c = ShapeRange((3, 4), (3, 4), (3, 128))
    ps = ProfileSet(("a", "b", "c"), (InputSpec("x", profiles=(a, b, c)),))
    env = ps.envelope()["x"]
    assert env.min == (1, 4)
    assert env.max == (16, 128)
    assert env.opt == (4, 16)  # from profile 0, not a min/max mix


def test_envelope_opt_follows_profile_order():
    swapped = two_profile_set(InputSpec("input_ids", profiles=(PREFILL, DECODE)), names=("prefill", "decode"))
    env = swapped.envelope()["input_ids"]
    assert (env.min, env.opt, env.max) == ((1, 1), (1, 256), (1, 512))


def test_envelope_with_batch_ranges():
    decode = ShapeRange((1, 1), (4, 1), (8, 1))
    prefill = ShapeRange((2, 16), (2, 128), (4, 256))
    env = two_profile_set(InputSpec("input_ids", profiles=(decode, prefill))).envelope()["input_ids"]
    assert (env.min, env.opt, env.max) == ((1, 1), (4, 1), (8, 256))


def test_envelope_of_single_profile_set_is_that_profile():
    env = SINGLE.envelope()
    assert env == {"input_ids": PREFILL, "position_ids": PREFILL}


def test_envelope_includes_unprofiled_input_unchanged():
    mask = ShapeRange((1, 4), (1, 4), (1, 4))
    ps = two_profile_set(InputSpec("input_ids", profiles=(DECODE, PREFILL)), InputSpec("mask", shape=mask))
    assert ps.envelope()["mask"] == mask


def test_every_profile_lies_inside_the_envelope():
    a = ShapeRange((2, 8), (4, 16), (4, 64))
    b = ShapeRange((1, 32), (8, 32), (16, 32))
    ps = ProfileSet(("a", "b"), (InputSpec("x", profiles=(a, b)),))
    env = ps.envelope()["x"]
    for r in (a, b):
        assert env.contains(r.min) and env.contains(r.opt) and env.contains(r.max)


# --- serialisation ---------------------------------------------------------------------


def test_to_dict_matches_torch_tensorrt_profile_keys():
    d = MULTI.to_dict()
    assert d["names"] == ["decode", "prefill"]
    assert d["inputs"][0] == {
        "name": "input_ids",
        "dtype": "int64",
        "profiles": [
            {"min_shape": [1, 1], "opt_shape": [1, 1], "max_shape": [1, 1]},
            {"min_shape": [1, 1], "opt_shape": [1, 256], "max_shape": [1, 512]},
        ],
    }


@pytest.mark.parametrize("ps", [MULTI, SINGLE], ids=["multi", "single"])
def test_to_dict_from_dict_round_trips(ps):
    assert ProfileSet.from_dict(ps.to_dict()) == ps


def test_round_trip_keeps_single_range_shape_and_dtype():
    mask = ShapeRange((1, 4), (1, 4), (1, 4))
    ps = two_profile_set(
        InputSpec("input_ids", profiles=(DECODE, PREFILL)), InputSpec("mask", shape=mask, dtype="bool")
    )
    d = ps.to_dict()
    assert d["inputs"][1] == {
        "name": "mask", "dtype": "bool", "shape": {"min_shape": [1, 4], "opt_shape": [1, 4], "max_shape": [1, 4]},
    }
    back = ProfileSet.from_dict(d)
    assert back == ps
    assert back.inputs[1].profiles is None and back.inputs[1].dtype == "bool"


def test_from_dict_validates():
    d = MULTI.to_dict()
    d["inputs"][0]["profiles"][1]["opt_shape"] = [1, 1024]
    with pytest.raises(ValueError, match=r"input 'input_ids', profile 1: dim 1 breaks min <= opt <= max "
                                         r"\(min 1, opt 1024, max 512\)"):
        ProfileSet.from_dict(d)


# --- ShapeRange ------------------------------------------------------------------------


def test_shape_range_contains_is_inclusive_and_rank_checked():
    assert PREFILL.contains((1, 1)) and PREFILL.contains((1, 512))
    assert not PREFILL.contains((1, 513))
    assert not PREFILL.contains((1, 0))
    assert not PREFILL.contains((1,))
    assert not PREFILL.contains((1, 1, 1))


def test_shape_range_is_static_only_when_min_equals_max():
    assert DECODE.is_static
    assert not PREFILL.is_static


# --- the declared sets -----------------------------------------------------------------


def test_multi_declares_decode_at_index_0_and_prefill_at_index_1():
    assert MULTI.names == ("decode", "prefill")
    assert MULTI.input_names == ("input_ids", "position_ids")
    for name in MULTI.input_names:
        decode, prefill = MULTI.ranges(0)[name], MULTI.ranges(1)[name]
        assert (decode.min, decode.opt, decode.max) == ((1, 1), (1, 1), (1, 1))
        assert decode.is_static
        assert (prefill.min, prefill.opt, prefill.max) == ((1, 1), (1, 256), (1, 512))


def test_single_declares_one_prefill_profile():
    assert SINGLE.names == ("prefill",)
    assert len(SINGLE) == 1
    for name in ("input_ids", "position_ids"):
        r = SINGLE.ranges(0)[name]
        assert (r.min, r.opt, r.max) == ((1, 1), (1, 256), (1, 512))


def test_profile_sets_registry_names_both_sets():
    assert PROFILE_SETS == {"multi": MULTI, "single": SINGLE}


def test_describe_names_index_profile_and_ranges():
    assert MULTI.describe(1) == (
        "1 (prefill: input_ids: min [1, 1], max [1, 512]; position_ids: min [1, 1], max [1, 512])"
    )
