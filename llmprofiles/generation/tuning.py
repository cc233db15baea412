"""The batch-1 decode step's best of several compiles, kept at build (as ``llm``'s static profiles, TUNE_RUNS).

Its compile tunes every kernel's launch config by timing it (coordinate descent), and the timings are noisy: on
the H200 two fresh builds' steps replayed in 1.525 and 1.425 ms (session 13), and with programmatic dependent
launch four compiles in 1.17-1.93 ms (session 12). The build compiles the step ``runs`` times, each from an empty
compile cache, captures and replays each, and keeps the fastest whose logits match the uncompiled step's: its
cache artifacts go into the inductor cache the server compiles from, and its launch configs are pinned there, so
the server's compile of the step is a cache hit on those kernels (:func:`keep`; the engine's warm-up keeps the
configs, :meth:`GenerationEngine.warm_up`).

    record, artifacts, configs = tune_decode_b1(engine, runs=3)
    keep(artifacts, configs)
    engine.warm_up()  # the step's compile: a cache hit on the kept attempt
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from llmprofiles.runtimes.compiled import (
    TUNE_MAX_DIFF,
    artifact_counts,
    clear_recorded_artifacts,
    fresh_compile_cache,
    kernel_configs,
    pick_fastest,
    pin_kernel_configs,
    replay_ms,
)

# Positions each attempt's step is timed at: a 128-token prompt's decode, past its first tokens.
TUNE_POSITION = 192


def b1_graph_key(engine) -> tuple[int, int]:
    """The batch-1 decode step's graph key (one graph, whatever the attention length)."""
    return engine.graph_key(engine.select(1, 1), engine.spec.max_context)


def tune_decode_b1(engine, runs: int) -> tuple[dict, bytes | None, dict[str, dict]]:
    """Compile ``engine``'s batch-1 decode step ``runs`` times from empty caches; keep the fastest correct one.

    Each attempt resets Dynamo, compiles and captures the step as the engine does (:meth:`_graph`), checks the
    replay's logits against the uncompiled step on the same inputs (within ``TUNE_MAX_DIFF`` of the largest
    logit), and times the replay (median of CUDA events). Returns the tuning record (every attempt's
    milliseconds and logit difference, the winner, the spread), the winner's compile cache artifacts and its
    kernels' launch configs. The engine is left with no compiled step and no graph for it.
    """
    f = engine.forward
    if engine.device.type != "cuda" or not engine.cuda_graphs:
        raise ValueError(f"tuning the batch-1 decode step needs CUDA graphs, the engine is on {engine.device}")
    if not (f.compiled and f.decode_kernel and f.whole_decode):
        raise ValueError("the batch-1 decode step is not compiled whole here (the build refused the decode attention "
                         "kernel, or the engine does not compile): nothing to tune")
    key = b1_graph_key(engine)
    diffs: dict[int, float] = {}

    def attempt(k: int) -> tuple[float, tuple[bytes | None, dict[str, dict]]]:
        torch._dynamo.reset()
        clear_recorded_artifacts()
        try:
            with fresh_compile_cache():
                graph, x, out = engine._graph(*key)  # compiles (coordinate descent) and captures
                x.positions.fill_(TUNE_POSITION)
                x.write_pos.fill_(TUNE_POSITION)
                graph.replay()
                with torch.inference_mode():
                    want = f._decode_b1(x.tokens, x.positions, x.slots, x.write_slots, x.write_pos).float()
                diff = (out.float() - want).abs().max().item()
                bound = TUNE_MAX_DIFF * max(1.0, want.abs().max().item())
                if not diff <= bound:  # NaN fails too
                    raise ValueError(f"logits differ from the uncompiled step's by {diff:.4g} (allowed {bound:.4g})")
                diffs[k] = diff
                ms = replay_ms(SimpleNamespace(graph=graph))
                saved = torch.compiler.save_cache_artifacts()
                configs = kernel_configs()
        finally:
            engine.graphs.pop(key, None)
        return ms, (None if saved is None else saved[0], configs)

    try:
        (artifacts, configs), record = pick_fastest(attempt, runs)
    finally:
        torch._dynamo.reset()
        clear_recorded_artifacts()
    for a in record["attempts"]:
        if a["attempt"] in diffs:
            a["max_abs_diff"] = diffs[a["attempt"]]
    record.update(position=TUNE_POSITION, artifacts=artifact_counts(artifacts), kernel_configs=len(configs))
    return record, artifacts, configs


def keep(artifacts: bytes | None, configs: dict[str, dict]) -> None:
    """Put the kept attempt's compile artifacts and launch configs into the current inductor cache."""
    if artifacts is not None:
        torch.compiler.load_cache_artifacts(artifacts)
    pin_kernel_configs(configs)


def served_b1_ms(engine) -> float:
    """The warmed engine's batch-1 decode graph, replayed (median ms) at TUNE_POSITION, as the attempts were."""
    graph, x, _ = engine.graphs[b1_graph_key(engine)]
    x.positions.fill_(TUNE_POSITION)
    x.write_pos.fill_(TUNE_POSITION)
    try:
        return replay_ms(SimpleNamespace(graph=graph))
    finally:  # back to the scratch inputs it was captured on
        x.positions.zero_()
        x.write_pos.zero_()
