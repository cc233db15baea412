# Call 3 (about 6 min): GPU 0: the llm Triton phase (first requests, steady state, perf_analyzer, load);
# GPU 1: the generate Triton phase (sweep 1/8/32/64 with client/generate.py and perf_analyzer). Nothing compiles
# beside them (llm's GPU tests moved to call 4): session 6's first llm decode overlapped such a compile.
source bench/gpu/env.sh
(export CUDA_VISIBLE_DEVICES=0
 tmo 560 make bench PY=python3 TUNE_RUNS=${TUNE_RUNS:-2} BUILD_MODELS="llm llm_single" BENCH_ARGS="--phase triton --load-s 30" > "$LOG/llm_triton.log" 2>&1; el llm triton phase rc=$?) & P0=$!
(export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 420 make bench-generate PY=python3 BENCH_ARGS="--phase triton --state $GEN_STATE --server-pythonpath /tmp/np1 --perf-analyzer /tmp/site/bin/perf_analyzer --sweep-seconds 15 --perf-interval-ms 5000 --port-base 18800" > "$LOG/gen_triton.log" 2>&1; el generate triton phase rc=$?) & P1=$!
wait $P0 $P1; finish
