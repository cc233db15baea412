# Call 2 (about 8 min): fresh builds 1 and 2 of llm_single in parallel; then on GPU 0 the decode of build 2
# and the full engine phase of build 1, back to back; on GPU 1 the generate build, its engine phase and
# its GPU tests.
source bench/gpu/env.sh
T="TUNE_RUNS=${TUNE_RUNS:-2}"
rm -f .w2/single.done
(export CUDA_VISIBLE_DEVICES=0
 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 $T BUILD_MODELS=llm_single > "$LOG/b1_single.log" 2>&1; el build 1 single
 wait_for() { while [ ! -f "$1" ]; do sleep 2; done; }; wait_for .w2/single.done
 mkdir -p .w2/bench/tmp && cp bench/tmp/state.json .w2/bench/tmp/ 2>/dev/null
 (cd .w2 && timeout 200 make bench PY=python3 $T BUILD_MODELS="llm llm_single" BENCH_ARGS="--phase engine --build-label 2 --decode-only" > "$LOG/decode_b2.log" 2>&1)
 mkdir -p bench/tmp && cp .w2/bench/tmp/state.json bench/tmp/state.json; el decode of build 2
 timeout 330 make bench PY=python3 $T BUILD_MODELS="llm llm_single" BENCH_ARGS="--phase engine --build-label 1" > "$LOG/llm_engine.log" 2>&1; el llm engine phase) &
(export CUDA_VISIBLE_DEVICES=1
 (cd .w2 && make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 $T BUILD_MODELS=llm_single > "$LOG/b2_single.log" 2>&1; touch single.done); el build 2 single
 export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 timeout 300 make bench-generate PY=python3 BENCH_ARGS="--phase engine" > "$LOG/gen_engine.log" 2>&1; el generate engine phase
 timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_generation_gpu.py > "$LOG/gpu_tests_generate.log" 2>&1; el generate GPU tests) &
wait; pack
