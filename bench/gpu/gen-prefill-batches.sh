# Several prompts per prefill step, A/B through Triton, on nvidia-h200-x2 carrying .whl3, in two calls on one warm
# machine (the builds stay in the tree between calls made within ~30 s of each other):
#   CALL_S=560 PHASE=build bash bench/gpu/gen-prefill-batches.sh    # about 6 min
#   CALL_S=500 PHASE=triton bash bench/gpu/gen-prefill-batches.sh   # about 7 min
# build: a fresh default build on GPU 1 and a fresh build with GEN_PREFILL_BATCHES=1,2,4 on GPU 0 (from a copy of
# the tree in .w2, its own inductor cache), in parallel; then generate's GPU tests on GPU 0 if time is left.
# triton: the Triton phase at concurrency 1 and 64 on each build in turn, then again in the other order on the other
# GPU (nothing else runs while one does), each into its own state: bench/tmp/{default,batched}-state{,2}.json.
source bench/gpu/env.sh
B="PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 BUILD_MODELS=generate TUNE_RUNS=1"  # one b1 compile: the prefill alone differs
BATCHES=${BATCHES:-1,2,4}
T="--phase triton --server-pythonpath /tmp/np1 --perf-analyzer /none --concurrency 1,64 --sweep-seconds 10 --steady-repeats 3"
triton_default() { (export CUDA_VISIBLE_DEVICES=$1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
  tmo 130 make bench-generate PY=python3 TUNE_RUNS=1 BENCH_ARGS="$T --state bench/tmp/default-state$2.json --out-dir bench/tmp/default$2 --port-base 18800" > "$LOG/triton_default$2.log" 2>&1; el default triton GPU $1 rc=$?); }
triton_batched() { (export CUDA_VISIBLE_DEVICES=$1 && cd .w2 && export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
  tmo 130 make bench-generate PY=python3 TUNE_RUNS=1 GEN_PREFILL_BATCHES=$BATCHES BENCH_ARGS="$T --state ../bench/tmp/batched-state$2.json --out-dir bench/tmp/batched$2 --port-base 18900" > "$LOG/triton_batched$2.log" 2>&1; el batched triton GPU $1 rc=$?); }
if [ "${PHASE:-build}" = build ]; then
  rm -rf .w2 && mkdir -p .w2 && tar --exclude=./.w2 --exclude="./$CARRY" -cf - . | tar -xf - -C .w2
  (export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
   tmo 420 make build $B > "$LOG/gen_build_default.log" 2>&1; el default build rc=$?) & P1=$!
  (export CUDA_VISIBLE_DEVICES=0 && cd .w2 && export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
   tmo 420 make build $B GEN_PREFILL_BATCHES=$BATCHES > "$LOG/gen_build_batched.log" 2>&1; el batched build rc=$?
   tmo 200 python3 -m pytest -q -p no:cacheprovider tests/test_generation_gpu.py > "$LOG/gpu_tests_generate.log" 2>&1
   el generate GPU tests rc=$?) & P0=$!
  wait $P1 $P0
else
  triton_default 1 ""; triton_batched 0 ""; triton_batched 1 2; triton_default 0 2
fi
finish
