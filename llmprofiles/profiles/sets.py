"""The project's one declaration of optimization profiles.

The build, both runtimes, model.py, the clients and the tests all read these; the
build copies the chosen set into the engine's manifest. Edit ranges here only.
"""

from llmprofiles.profiles.generation import GenerationSpec
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

# The generate model's step profiles, per model: decode buckets over batch size
# (seq == 1) come first, then prefill buckets over prompt length (batch == 1);
# GenerationSpec.profiles() turns them into one ordered ProfileSet. Slots x
# max_context is the KV pool. `make build` can override each field.
GENERATE = {
    "tiny": GenerationSpec(slots=8, max_context=512, decode_buckets=(1, 2, 4, 8), prefill_buckets=(16, 32, 64, 128)),
    # gemma-3-1b shapes on the H200: 64 slots x 2048 positions is a 3.5 GB fp16 KV pool.
    "gemma-3-1b": GenerationSpec(slots=64, max_context=2048, decode_buckets=(1, 2, 4, 8, 16, 32, 64),
                                 prefill_buckets=(64, 128, 256, 512)),
}


def generate_spec(model: str) -> GenerationSpec:
    """The declared generate spec of a preset; a local model folder gets the gemma-3-1b one."""
    return GENERATE.get(model, GENERATE["gemma-3-1b"])
