# A short generate check (about 9.5 min on nvidia-h200-x2; CALL_S=590), for a change to the serving path after a full run:
# GPU 0 runs generate's GPU tests while GPU 1 makes a fresh generate build; then GPU 1 alone runs the Triton phase at
# concurrency 1 and 64 (client/generate.py and the scheduler's time by part; no perf_analyzer), into its own state.
# On one GPU: TEST_GPU=0 MAIN_GPU=0 (the tests then share the GPU with the build, not with the Triton phase).
# KERNEL_CASES (e.g. "decode_b1,decode_b8"): after the tests, GPU 0 takes those steps' kernel tables
# (bench/probes/step_kernels.py) into $LOG/step_kernels.json.
# STREAM_VARIANTS (e.g. "send_budget_ms=0.5,cancel_check_ms=20"): then the stream phase's A/B at 64 streams, one
# fresh server per variant, into the same state.
source bench/gpu/env.sh
rm -f bench/tmp/tests.done
(export CUDA_VISIBLE_DEVICES=${TEST_GPU:-0} TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-tests
 tmo 200 python3 -m pytest -q -p no:cacheprovider tests/test_generation_gpu.py tests/test_decode_attention.py \
   > "$LOG/gpu_tests_generate.log" 2>&1; el generate GPU tests rc=$?; touch bench/tmp/tests.done
 [ -z "${KERNEL_CASES:-}" ] || { tmo 240 python3 -m bench.probes.step_kernels --cases "$KERNEL_CASES" --sdpa-lengths "" \
   --out "$LOG/step_kernels.json" > "$LOG/step_kernels.log" 2>&1; el kernel tables rc=$?; }) & P0=$!
(export CUDA_VISIBLE_DEVICES=${MAIN_GPU:-1} TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 560 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 BUILD_MODELS=generate > "$LOG/gen_build.log" 2>&1; el generate build rc=$?
 wait_for bench/tmp/tests.done
 tmo 240 make bench-generate PY=python3 BENCH_ARGS="--phase triton --state bench/tmp/verify-state.json --out-dir bench/tmp/verify --server-pythonpath /tmp/np1 --perf-analyzer /none --concurrency 1,64 --sweep-seconds 10 --steady-repeats 3 --port-base 18800" > "$LOG/gen_triton.log" 2>&1; el generate triton phase rc=$?
 for v in ${STREAM_VARIANTS:-}; do VS="$VS --stream-variant $v"; done
 [ -z "${STREAM_VARIANTS:-}" ] || { tmo 200 make bench-generate PY=python3 BENCH_ARGS="--phase stream --state bench/tmp/verify-state.json --out-dir bench/tmp/verify --server-pythonpath /tmp/np1 --stream-intervals none $VS --sweep-seconds 10 --port-base 18900" > "$LOG/gen_stream.log" 2>&1; el generate stream phase rc=$?; }) & P1=$!
wait $P0 $P1; finish
