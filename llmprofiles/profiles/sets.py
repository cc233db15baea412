"""The project's one declaration of optimization profiles.

The build, both runtimes, model.py, the clients and the tests all read these; the
build copies the chosen set into the engine's manifest. Edit ranges here only.
"""

from llmprofiles.profiles.spec import InputSpec, ProfileSet, ShapeRange

# Order is the profile index (and the engine's optimization-profile index).
# decode comes first so that, under ordered first-fit, it wins the seq == 1
# overlap with prefill.
_DECODE = ShapeRange(min=(1, 1), opt=(1, 1), max=(1, 1))
_PREFILL = ShapeRange(min=(1, 1), opt=(1, 256), max=(1, 512))

MULTI = ProfileSet(
    names=("decode", "prefill"),
    inputs=(
        InputSpec("input_ids", profiles=(_DECODE, _PREFILL)),
        InputSpec("position_ids", profiles=(_DECODE, _PREFILL)),
    ),
)

# The single-profile baseline: one range tuned at the prefill length, as an
# engine without multiple profiles would be built.
SINGLE = ProfileSet(
    names=("prefill",),
    inputs=(
        InputSpec("input_ids", profiles=(_PREFILL,)),
        InputSpec("position_ids", profiles=(_PREFILL,)),
    ),
)

PROFILE_SETS = {"multi": MULTI, "single": SINGLE}
