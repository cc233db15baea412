# Call 2 (about 6 min): fresh builds 1 and 2 of llm_single in parallel; then GPU 0 runs the full engine phase of
# build 1. Build 2's decode is measured at the start of call 3, on GPU 0 like build 1's. The generate model is no
# longer built here: its build (about 8 min since session 15: batch-1 tuning, fresh and batched prefill compiles) has
# its own calls, bench/gpu/gen-*.sh; calls 3 and 4 measure it only with GEN=1, after gen-1 and gen-2.
source bench/gpu/env.sh
T="TUNE_RUNS=${TUNE_RUNS:-2}"
(export CUDA_VISIBLE_DEVICES=0
 tmo 300 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 $T BUILD_MODELS=llm_single > "$LOG/b1_single.log" 2>&1; el build 1 single rc=$?
 tmo 400 make bench PY=python3 $T BUILD_MODELS="llm llm_single" BENCH_ARGS="--phase engine --build-label 1" > "$LOG/llm_engine.log" 2>&1; el llm engine phase rc=$?) & P0=$!
(export CUDA_VISIBLE_DEVICES=1
 (cd .w2 && tmo 300 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 $T BUILD_MODELS=llm_single > "$LOG/b2_single.log" 2>&1); el build 2 single rc=$?) & P1=$!
wait $P0 $P1; finish
