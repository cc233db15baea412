# Call 3 (about 9 min): GPU 0: the decode of build 1 and then of build 2 (decode only, recorded into the same
# state, in the same quiet window: nothing else runs on the host meanwhile), then the llm Triton phase (first
# requests, steady state, perf_analyzer, load); GPU 1 waits for those two decodes, then runs the generate Triton
# phase (sweep 1/8/32/64 with client/generate.py and perf_analyzer) with GEN=1, after bench/gpu/gen-1 and gen-2. Nothing compiles beside the Triton phases
# (llm's GPU tests run in call 4): session 6's first llm decode overlapped such a compile.
source bench/gpu/env.sh
T="TUNE_RUNS=${TUNE_RUNS:-2}"
rm -f bench/tmp/decodes.done
(export CUDA_VISIBLE_DEVICES=0
 tmo 150 make bench PY=python3 $T BUILD_MODELS="llm llm_single" BENCH_ARGS="--phase engine --build-label 1 --decode-only" > "$LOG/decode_b1.log" 2>&1; el decode of build 1 rc=$?
 mkdir -p .w2/bench/tmp && { [ ! -f bench/tmp/state.json ] || cp bench/tmp/state.json .w2/bench/tmp/; }
 (cd .w2 && tmo 150 make bench PY=python3 $T BUILD_MODELS="llm llm_single" BENCH_ARGS="--phase engine --build-label 2 --decode-only" > "$LOG/decode_b2.log" 2>&1); el decode of build 2 rc=$?
 { [ ! -f .w2/bench/tmp/state.json ] || cp .w2/bench/tmp/state.json bench/tmp/state.json; }; touch bench/tmp/decodes.done
 tmo 560 make bench PY=python3 $T BUILD_MODELS="llm llm_single" BENCH_ARGS="--phase triton --load-s 30" > "$LOG/llm_triton.log" 2>&1; el llm triton phase rc=$?) & P0=$!
[ -n "${GEN:-}" ] && (export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 wait_for bench/tmp/decodes.done || el "the decodes of builds 1 and 2 did not finish"
 tmo 420 make bench-generate PY=python3 BENCH_ARGS="--phase triton --state $GEN_STATE --server-pythonpath /tmp/np1 --perf-analyzer /tmp/site/bin/perf_analyzer --sweep-seconds 15 --perf-interval-ms 5000 --port-base 18800" > "$LOG/gen_triton.log" 2>&1; el generate triton phase rc=$?) & P1=$!
wait $P0 $P1; finish
