# Issue 12 on one GPU, call C (about 7 min, CALL_S=480), within 30 s of call B: build 2's decode (decode only, into
# build 1's state as fresh build 2), then the Triton phase on build 1 (first requests after ready, steady state,
# perf_analyzer, load), which writes the results file from the state; then, with any time left, the stub probe
# (bench/probes/stub_host.py, about 30 s). (Issue 12's run of record is bench/gpu/llm-rec-bg.sh.)
source bench/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0
T="TUNE_RUNS=${TUNE_RUNS:-2}"
mkdir -p .w2/bench/tmp && cp bench/tmp/state.json .w2/bench/tmp/
(cd .w2 && tmo 150 make bench PY=python3 $T BUILD_MODELS="llm llm_single" BENCH_ARGS="--phase engine --build-label 2 --decode-only" \
  > "$LOG/decode_b2.log" 2>&1); el decode of build 2 rc=$?
cp .w2/bench/tmp/state.json bench/tmp/state.json
tmo 400 make bench PY=python3 $T BUILD_MODELS="llm llm_single" BENCH_ARGS="--phase triton --load-s 30" \
  > "$LOG/llm_triton.log" 2>&1; el llm triton phase rc=$?
tmo 60 python3 -m bench.probes.stub_host > "$LOG/stub_host.log" 2>&1; el stub probe rc=$?
finish
