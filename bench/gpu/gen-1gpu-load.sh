# One GPU (nvidia-h200), about 8.5 min (CALL_S=580; session 21: 502 s), within 30 s of gen-1gpu-a.sh (which builds
# generate from scratch and measures it): first the Triton phase, if gen-1gpu-a.sh ran out of time before it ended
# (session 21: a 343 s build on a slow host left it 90 s); then the generate load run alone on the GPU (300 s at
# concurrency 64, every 10th request cancelled; memory is read for the whole GPU, so nothing else runs beside it);
# then generate's GPU tests if no earlier call of this machine passed them all, else the kernels' GPU tests and the
# matrix-vector probe, with whatever time is left.
source bench/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
if ! python3 -c "import json, sys; sys.exit('triton' not in json.load(open('$GEN_STATE')))"; then
  tmo 200 make bench-generate PY=python3 BENCH_ARGS="--phase triton --state $GEN_STATE --server-pythonpath /tmp/np1 --perf-analyzer /tmp/site/bin/perf_analyzer --concurrency 1,64 --sweep-seconds 12 --perf-interval-ms 5000 --port-base 18800" \
    > "$LOG/gen_triton2.log" 2>&1; el generate triton phase again rc=$?
  cp bench/tmp/generate/server.log "$LOG/server_triton2.log" 2>/dev/null
fi
tmo 420 make bench-generate PY=python3 BENCH_ARGS="--phase load --state $GEN_STATE --server-pythonpath /tmp/np1 --load-seconds ${LOAD_S:-300} --port-base 18800" \
  > "$LOG/gen_load.log" 2>&1; el load rc=$?
cp bench/tmp/generate/server.log "$LOG/server_load.log" 2>/dev/null
if ! tail -n 1 "$LOG/gpu_tests_generate.log" | grep -q ' passed' || tail -n 1 "$LOG/gpu_tests_generate.log" | grep -q -E 'failed|error'; then
  mv "$LOG/gpu_tests_generate.log" "$LOG/gpu_tests_generate_b.log" 2>/dev/null
  tmo 400 python3 -m pytest -v -p no:cacheprovider tests/test_generation_gpu.py > "$LOG/gpu_tests_generate.log" 2>&1
  el generate GPU tests again rc=$?
else
  tmo 150 python3 -m pytest -v -p no:cacheprovider tests/test_mlp_kernel.py tests/test_decode_attention.py \
    > "$LOG/gpu_tests_kernels.log" 2>&1; el kernel GPU tests rc=$?
  tmo 90 python3 -m bench.probes.mlp_gemv --extra-configs 2x2048x4,2x2048x8,4x1024x4,4x1024x8 --out bench/tmp/mlp_gemv.json \
    > "$LOG/mlp_gemv.log" 2>&1; el matrix-vector probe rc=$?
fi
finish
