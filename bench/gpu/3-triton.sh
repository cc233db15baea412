# Call 3 (about 6 min): GPU 0: the llm Triton phase (first requests, steady state, perf_analyzer, load);
# GPU 1: the generate Triton phase (sweep 1/8/32/64 with client/generate.py and perf_analyzer), then llm's GPU tests.
source bench/gpu/env.sh
(export CUDA_VISIBLE_DEVICES=0
 timeout 560 make bench PY=python3 TUNE_RUNS=${TUNE_RUNS:-2} BUILD_MODELS="llm llm_single" BENCH_ARGS="--phase triton --load-s 30" > "$LOG/llm_triton.log" 2>&1; el llm triton phase) &
(export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 timeout 420 make bench-generate PY=python3 BENCH_ARGS="--phase triton --server-pythonpath /tmp/np1 --perf-analyzer /tmp/site/bin/perf_analyzer --sweep-seconds 15 --perf-interval-ms 5000 --port-base 18800" > "$LOG/gen_triton.log" 2>&1; el generate triton phase
 timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$LOG/gpu_tests_llm.log" 2>&1; el llm GPU tests) &
wait; pack
