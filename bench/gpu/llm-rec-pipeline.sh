# Issue 12's run of record on one GPU, every step in one process tree that outlives the device calls
# (started by bench/gpu/llm-rec-bg.sh with setsid). Calls only wait and pack, so a step is never cut at a call's
# end and the GPU is not idle between calls. Steps, each timed into bench/tmp/gpu-logs/steps.txt:
#   fresh build 1 of llm and llm_single; the full engine phase as build 1;
#   fresh build 2 of both in .w2 (its own inductor cache); build 2's decode into the same state;
#   the Triton phase on build 1 (first requests after ready, steady state, perf_analyzer, load), which writes the
#   results file from the state.
# Order: the two builds' decodes (the spread) before Triton, which needs less of a machine the report lacks.
source bench/gpu/rec-common.sh
T="TUNE_RUNS=${TUNE_RUNS:-2}"
M='BUILD_MODELS=llm llm_single'
timeout 900 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 $T "$M" > "$LOG/b1_build.log" 2>&1
st build 1 rc=$?
timeout 400 make bench PY=python3 $T "$M" BENCH_ARGS="--phase engine --build-label 1" > "$LOG/b1_engine.log" 2>&1
st engine phase of build 1 rc=$?
(cd .w2 && timeout 900 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 $T "$M") > "$LOG/b2_build.log" 2>&1
st build 2 rc=$?
mkdir -p .w2/bench/tmp && cp bench/tmp/state.json .w2/bench/tmp/
(cd .w2 && timeout 300 make bench PY=python3 $T "$M" BENCH_ARGS="--phase engine --build-label 2 --decode-only") \
  > "$LOG/b2_decode.log" 2>&1
st decode of build 2 rc=$?
cp .w2/bench/tmp/state.json bench/tmp/state.json
timeout 600 make bench PY=python3 $T "$M" BENCH_ARGS="--phase triton --load-s ${LOAD_S:-20}" > "$LOG/triton.log" 2>&1
st triton phase rc=$?
touch bench/tmp/pipeline.done
