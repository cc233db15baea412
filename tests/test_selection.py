"""Ordered first-fit and per-request profile choice, as pure functions of (profiles, shapes, choice).

Pure logic, no Triton or GPU: ``python -m pytest tests/test_selection.py -q``.
"""

import pytest

from llmprofiles.profiles.selection import AUTO, SelectionError, parse_choice, select_profile
from llmprofiles.profiles.sets import MULTI, SINGLE
from llmprofiles.profiles.spec import InputSpec, ProfileSet, ShapeRange

DECODE = ShapeRange((1, 1), (1, 1), (1, 1))
PREFILL = ShapeRange((1, 1), (1, 256), (1, 512))
ALLOWED_MULTI = "allowed: 'auto', an index in [0, 1], or one of ['decode', 'prefill']"


def shapes(batch: int, seq: int) -> dict[str, tuple[int, int]]:
    return {"input_ids": (batch, seq), "position_ids": (batch, seq)}


def profile_set(names: tuple[str, ...], *ranges: ShapeRange) -> ProfileSet:
    return ProfileSet(names, (InputSpec("input_ids", profiles=ranges), InputSpec("position_ids", profiles=ranges)))


# --- ordered first-fit ------------------------------------------------------------------


def test_decode_first_wins_the_seq_1_overlap():
    assert select_profile(MULTI, shapes(1, 1)) == 0


@pytest.mark.parametrize("seq", [2, 256, 300, 512])
def test_seq_above_1_falls_through_to_prefill(seq):
    assert select_profile(MULTI, shapes(1, seq)) == 1


def test_swapping_order_makes_prefill_win_seq_1():
    swapped = profile_set(("prefill", "decode"), PREFILL, DECODE)
    assert select_profile(swapped, shapes(1, 1)) == 0
    assert swapped.names[select_profile(swapped, shapes(1, 1))] == "prefill"
    # decode is now unreachable under auto: every shape it holds, prefill holds first.
    assert select_profile(swapped, shapes(1, 256)) == 0


def test_single_set_serves_seq_1_with_its_only_profile():
    assert select_profile(SINGLE, shapes(1, 1)) == 0
    assert select_profile(SINGLE, shapes(1, 512)) == 0


def test_non_overlapping_middle_profile_takes_only_its_range():
    short = ShapeRange((1, 1), (1, 8), (1, 16))
    middle = ShapeRange((1, 64), (1, 96), (1, 128))
    wide = ShapeRange((1, 1), (1, 256), (1, 512))
    ps = profile_set(("short", "middle", "wide"), short, middle, wide)
    assert [select_profile(ps, shapes(1, s)) for s in (1, 16, 17, 63, 64, 100, 128, 129, 512)] == [
        0, 0, 2, 2, 1, 1, 1, 2, 2,
    ]


def test_overlapping_profiles_pick_the_lowest_index_that_fits():
    a = ShapeRange((1, 1), (1, 64), (1, 128))
    b = ShapeRange((1, 64), (1, 128), (1, 256))
    ps = profile_set(("a", "b"), a, b)
    assert select_profile(ps, shapes(1, 64)) == 0
    assert select_profile(ps, shapes(1, 128)) == 0
    assert select_profile(ps, shapes(1, 129)) == 1
    ps_swapped = profile_set(("b", "a"), b, a)
    assert select_profile(ps_swapped, shapes(1, 64)) == 0  # now "b"
    assert select_profile(ps_swapped, shapes(1, 63)) == 1  # only "a" holds 63


def test_batch_dim_decides_between_profiles():
    decode_batched = ShapeRange((1, 1), (8, 1), (8, 1))
    prefill_batch1 = ShapeRange((1, 1), (1, 256), (1, 512))
    ps = profile_set(("decode", "prefill"), decode_batched, prefill_batch1)
    assert select_profile(ps, shapes(8, 1)) == 0
    assert select_profile(ps, shapes(1, 1)) == 0
    assert select_profile(ps, shapes(1, 2)) == 1
    with pytest.raises(SelectionError, match=r"input shapes .*\[9, 1\].* fit no optimization profile"):
        select_profile(ps, shapes(9, 1))
    with pytest.raises(SelectionError, match=r"fit no optimization profile"):
        select_profile(ps, shapes(2, 2))


def test_every_input_must_fit_the_same_profile():
    assert MULTI.first_fit({"input_ids": (1, 1), "position_ids": (1, 2)}) == 1
    assert MULTI.first_fit({"input_ids": (1, 1), "position_ids": (1, 513)}) is None


def test_auto_is_not_sticky():
    got = [select_profile(MULTI, shapes(1, s), AUTO) for s in (256, 1, 256, 1, 1)]
    assert got == [1, 0, 1, 0, 0]


def test_auto_does_not_remember_a_manual_choice():
    assert select_profile(MULTI, shapes(1, 1), "prefill") == 1
    assert select_profile(MULTI, shapes(1, 1)) == 0


@pytest.mark.parametrize("batch,seq", [(1, 0), (1, 513), (2, 1), (2, 256)])
def test_shapes_outside_every_profile_raise(batch, seq):
    with pytest.raises(SelectionError) as e:
        select_profile(MULTI, shapes(batch, seq))
    msg = str(e.value)
    assert f"input shapes {{'input_ids': [{batch}, {seq}], 'position_ids': [{batch}, {seq}]}}" in msg
    assert "fit no optimization profile" in msg
    assert "0 (decode: input_ids: min [1, 1], max [1, 1]" in msg
    assert "1 (prefill: input_ids: min [1, 1], max [1, 512]" in msg


def test_wrong_rank_fits_no_profile():
    with pytest.raises(SelectionError, match="fit no optimization profile"):
        select_profile(MULTI, {"input_ids": (1, 1, 1), "position_ids": (1, 1, 1)})


# --- parse_choice ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["auto", None])
def test_auto_and_none_mean_first_fit(value):
    assert parse_choice(MULTI, value) is None


@pytest.mark.parametrize("value,index", [(0, 0), (1, 1), ("0", 0), ("1", 1), ("decode", 0),
                                         ("prefill", 1)])
def test_index_numeric_string_and_name_parse_to_index(value, index):
    assert parse_choice(MULTI, value) == index


def test_single_set_accepts_only_index_0_and_prefill():
    assert parse_choice(SINGLE, 0) == 0
    assert parse_choice(SINGLE, "prefill") == 0
    with pytest.raises(SelectionError, match=r"index 1 is out of range; allowed: 'auto', an index in \[0, 0\], "
                                             r"or one of \['prefill'\]"):
        parse_choice(SINGLE, 1)
    with pytest.raises(SelectionError, match=r"'decode' is not a known profile"):
        parse_choice(SINGLE, "decode")


def test_unknown_name_raises_naming_value_and_allowed():
    with pytest.raises(SelectionError) as e:
        parse_choice(MULTI, "generate")
    assert str(e.value) == f"optimization_profile 'generate' is not a known profile; {ALLOWED_MULTI}"


@pytest.mark.parametrize("value", ["Decode", "AUTO", "1.0", ""])
def test_near_miss_strings_raise(value):
    with pytest.raises(SelectionError, match=f"optimization_profile {value!r} is not a known profile"):
        parse_choice(MULTI, value)


@pytest.mark.parametrize("value,shown", [(2, "2"), (7, "7"), ("2", "2"), (-1, "-1")])
def test_out_of_range_index_raises(value, shown):
    with pytest.raises(SelectionError) as e:
        parse_choice(MULTI, value)
    assert str(e.value) == f"optimization_profile index {shown} is out of range; {ALLOWED_MULTI}"


@pytest.mark.parametrize("value", [True, False, 1.0, 0.0, {"index": 0}, [0], (1,), b"decode"])
def test_malformed_value_raises_naming_value(value):
    with pytest.raises(SelectionError) as e:
        parse_choice(MULTI, value)
    assert str(e.value) == f"optimization_profile {value!r} is malformed; {ALLOWED_MULTI}"


@pytest.mark.parametrize("value", [" 1 ", "1 ", "+1", "-1", "01", "\u0661", "\uff11", "1\n", "decode\0prefill",
                                   "decode\0", "\0", "1_0", "0x1", "1e0", "9" * 10])
def test_index_strings_must_be_canonical_ascii_decimal(value):
    """Issue 13 item 6: spaces, signs, leading zeros, non-ASCII digits and NULs are refused, never read as an index."""
    with pytest.raises(SelectionError, match="is not a known profile"):
        parse_choice(MULTI, value)


def test_huge_value_is_echoed_cut_to_64_characters_with_its_length():
    """Issue 13 item 5: a 10 MB value must not come back whole in the error."""
    with pytest.raises(SelectionError) as e:
        parse_choice(MULTI, "x" * 10_000_000)
    msg = str(e.value)
    assert len(msg) < 300, len(msg)
    assert "'xxxx" in msg and "… (10000000 characters)" in msg and "allowed: 'auto'" in msg


def test_selection_error_is_a_value_error():
    assert issubclass(SelectionError, ValueError)


def test_bad_choice_is_refused_by_select_profile_even_when_shapes_fit():
    with pytest.raises(SelectionError, match="is malformed"):
        select_profile(MULTI, shapes(1, 1), True)
    with pytest.raises(SelectionError, match="out of range"):
        select_profile(MULTI, shapes(1, 1), 5)


# --- manual choice -----------------------------------------------------------------------


def test_manual_choice_overrides_first_fit_when_it_fits():
    assert select_profile(MULTI, shapes(1, 1), 1) == 1
    assert select_profile(MULTI, shapes(1, 1), "prefill") == 1
    assert select_profile(MULTI, shapes(1, 1), "0") == 0


def test_manual_decode_with_seq_2_is_refused():
    with pytest.raises(SelectionError) as e:
        select_profile(MULTI, shapes(1, 2), "decode")
    msg = str(e.value)
    assert "input shapes {'input_ids': [1, 2], 'position_ids': [1, 2]}" in msg
    assert "are outside optimization profile 0 (decode: input_ids: min [1, 1], max [1, 1]" in msg
    assert "choose another profile or 'auto'" in msg


def test_manual_prefill_with_seq_513_is_refused():
    with pytest.raises(SelectionError, match=r"\[1, 513\].*outside optimization profile 1 \(prefill: "
                                             r"input_ids: min \[1, 1\], max \[1, 512\]"):
        select_profile(MULTI, shapes(1, 513), 1)


def test_manual_choice_with_batch_2_is_refused():
    with pytest.raises(SelectionError, match=r"outside optimization profile 1 \(prefill"):
        select_profile(MULTI, shapes(2, 4), "prefill")
