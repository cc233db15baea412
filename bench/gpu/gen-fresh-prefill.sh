# The fresh prefill's A/B through Triton (about 8 min on nvidia-h200-x2; run in session 14, when it was off by default):
# a fresh build with GEN_FRESH_PREFILL=0 on GPU 1 and a fresh build with GEN_FRESH_PREFILL=1 (the default since) on GPU 0 (from a copy of the tree in .w2, its own inductor cache), in parallel;
# generate's GPU tests after the second build, on GPU 0; then the Triton phase at concurrency 1 and 64 on each
# build in turn (no perf_analyzer), each into its own state. Nothing else runs while a Triton phase does.
source bench/gpu/env.sh
rm -rf .w2 && mkdir -p .w2 && tar --exclude=./.w2 --exclude="./$CARRY" -cf - . | tar -xf - -C .w2
B="PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 BUILD_MODELS=generate TUNE_RUNS=1"
T="--phase triton --server-pythonpath /tmp/np1 --perf-analyzer /none --concurrency 1,64 --sweep-seconds 10 --steady-repeats 3"
(export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 520 make build $B GEN_FRESH_PREFILL=0 > "$LOG/gen_build_default.log" 2>&1; el default build rc=$?) & P1=$!
(export CUDA_VISIBLE_DEVICES=0 && cd .w2 && export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 520 make build $B GEN_FRESH_PREFILL=1 > "$LOG/gen_build_fresh.log" 2>&1; el fresh-prefill build rc=$?
 tmo 200 python3 -m pytest -q -p no:cacheprovider tests/test_generation_gpu.py > "$LOG/gpu_tests_generate.log" 2>&1
 el generate GPU tests rc=$?) & P0=$!
wait $P1 $P0
(export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 150 make bench-generate PY=python3 TUNE_RUNS=1 GEN_FRESH_PREFILL=0 BENCH_ARGS="$T --state bench/tmp/default-state.json --out-dir bench/tmp/default --port-base 18800" > "$LOG/triton_default.log" 2>&1; el default triton phase rc=$?)
(export CUDA_VISIBLE_DEVICES=0 && cd .w2 && export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 150 make bench-generate PY=python3 TUNE_RUNS=1 GEN_FRESH_PREFILL=1 BENCH_ARGS="$T --state ../bench/tmp/fresh-state.json --out-dir bench/tmp/fresh --port-base 18900" > "$LOG/triton_fresh.log" 2>&1; el fresh-prefill triton phase rc=$?)
finish
