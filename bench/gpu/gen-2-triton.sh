# Call 2 (about 4 min): the generate Triton phase on GPU 1 (first request after ready, the sweep 1/8/32/64 with
# client/generate.py and perf_analyzer, the scheduler thread's time per step); nothing else runs on the host.
source bench/gpu/env.sh
(export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 420 make bench-generate PY=python3 BENCH_ARGS="--phase triton --state $GEN_STATE --server-pythonpath /tmp/np1 --perf-analyzer /tmp/site/bin/perf_analyzer --sweep-seconds 15 --perf-interval-ms 5000 --port-base 18800" > "$LOG/gen_triton.log" 2>&1; el generate triton phase rc=$?) & P1=$!
wait $P1; finish
