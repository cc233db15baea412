# The call after gen-builds-engines.sh (about 9 min on nvidia-h200-x2; CALL_S=560): build 1's Triton phase on GPU 1
# (the sweep 1/8/32/64 with client/generate.py and perf_analyzer, first request after ready); on GPU 0 the batch-1
# step with the MLP kernels against inductor's MLP, side by side in one process, twice each
# (bench/probes/decode_step.py), the batch-1 kernel table (bench/probes/step_kernels.py), the MLP kernels at each
# block size against cuBLAS and inductor (bench/probes/mlp_gemv.py), then generate's GPU tests.
source bench/gpu/env.sh
(export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 330 make bench-generate PY=python3 BENCH_ARGS="--phase triton --state $GEN_STATE --server-pythonpath /tmp/np1 --perf-analyzer /tmp/site/bin/perf_analyzer --sweep-seconds 15 --perf-interval-ms 5000 --port-base 18800" > "$LOG/gen_triton.log" 2>&1; el generate triton phase rc=$?
 cp bench/tmp/generate/server.log "$LOG/server_triton.log" 2>/dev/null) & P1=$!
(export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-probe
 V=cdt+gemv,cdt+gemv+mlp,cdt+gemv,cdt+gemv+mlp
 tmo 200 python3 -m bench.probes.decode_step --out "$LOG/decode_step_mlp.json" --forms whole --batches 1 --contexts 192,1900 \
   --b1-variants $V --batch-variants "" > "$LOG/decode_step_mlp.log" 2>&1; el decode step A/B rc=$?
 tmo 100 python3 -m bench.probes.step_kernels --cases decode_b1 --sdpa-lengths "" --out "$LOG/step_kernels_mlp.json" \
   > "$LOG/step_kernels_mlp.log" 2>&1; el kernel table rc=$?
 tmo 90 python3 -m bench.probes.mlp_gemv --out "$LOG/mlp_gemv.json" > "$LOG/mlp_gemv.log" 2>&1; el MLP block sizes rc=$?
 export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-tests
 tmo 260 python3 -m pytest -q -p no:cacheprovider tests/test_generation_gpu.py tests/test_decode_attention.py tests/test_mlp_kernel.py \
   > "$LOG/gpu_tests_generate.log" 2>&1; el generate GPU tests rc=$?) & P0=$!
wait $P0 $P1; finish
