# Several prompts per prefill step, A/B through Triton, on nvidia-h200-x2 carrying .whl3, in two calls on one warm
# machine (the builds stay in the tree between calls made within ~30 s of each other):
#   CALL_S=570 PHASE=build bash bench/gpu/gen-prefill-batches.sh    # about 9 min
#   CALL_S=560 PHASE=triton bash bench/gpu/gen-prefill-batches.sh   # about 8 min: engine phases, a Triton run each
#   CALL_S=400 PHASE=triton2 bash bench/gpu/gen-prefill-batches.sh  # about 6 min: a Triton run each, swapped
# Batched prefill is the default on CUDA since this A/B (session 15); "default" here is GEN_PREFILL_BATCHES=1, one
# prompt per step. build: a fresh build with GEN_PREFILL_BATCHES=1 on GPU 1 and a fresh one with 1,2,4 on GPU 0 (from a copy of
# the tree in .w2, its own inductor cache), in parallel, both with the default batch-1 tuning (TUNE_RUNS, so each
# is also a fresh tuned build: the batch-1 spread), each followed by its engine phase while time is left.
# triton: the engine phase of a build that has none yet (both GPUs at once), then the Triton phase at concurrency 1
# and 64 on each build in turn; triton2: again in the other order on the other GPU (nothing else runs while one does),
# each into its own state: bench/tmp/{default,batched}-state{,2}.json.
source bench/gpu/env.sh
TR=${TR:-}   # TUNE_RUNS for both builds and every later make (it is part of the build's identity); empty = default
B="PY=python3 MODEL=gemma-3-1b DEVICE=cuda BUILD_MODELS=generate ${TR:+TUNE_RUNS=$TR}"
ONE="GEN_PREFILL_BATCHES=1"
BATCHES=${BATCHES:-1,2,4}
E="--phase engine"
T="--phase triton --server-pythonpath /tmp/np1 --perf-analyzer /none --concurrency 1,64 --sweep-seconds 10 --steady-repeats 3"
engine_default() { (export CUDA_VISIBLE_DEVICES=$1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
  tmo 200 make bench-generate $B $ONE BENCH_ARGS="$E --state bench/tmp/default-state.json --out-dir bench/tmp/default" > "$LOG/engine_default.log" 2>&1; el default engine GPU $1 rc=$?); }
engine_batched() { (export CUDA_VISIBLE_DEVICES=$1 && cd .w2 && export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
  tmo 200 make bench-generate $B GEN_PREFILL_BATCHES=$BATCHES BENCH_ARGS="$E --state ../bench/tmp/batched-state.json --out-dir bench/tmp/batched" > "$LOG/engine_batched.log" 2>&1; el batched engine GPU $1 rc=$?); }
triton_default() { (export CUDA_VISIBLE_DEVICES=$1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
  tmo 170 make bench-generate $B $ONE BENCH_ARGS="$T --state bench/tmp/default-state$2.json --out-dir bench/tmp/default$2 --port-base 18800" > "$LOG/triton_default$2.log" 2>&1
  el default triton GPU $1 rc=$?; cp bench/tmp/generate/server.log "$LOG/server_default$2.log" 2>/dev/null); }
triton_batched() { (export CUDA_VISIBLE_DEVICES=$1 && cd .w2 && export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
  tmo 170 make bench-generate $B GEN_PREFILL_BATCHES=$BATCHES BENCH_ARGS="$T --state ../bench/tmp/batched-state$2.json --out-dir bench/tmp/batched$2 --port-base 18900" > "$LOG/triton_batched$2.log" 2>&1
  el batched triton GPU $1 rc=$?; cp bench/tmp/generate/server.log "$LOG/server_batched$2.log" 2>/dev/null); }
has_engine() { python3 -c "import json,sys; sys.exit(0 if json.load(open('$1')).get('engine') else 1)" 2>/dev/null; }
if [ "${PHASE:-build}" = build ]; then
  rm -rf .w2 bench/tmp/default-state*.json bench/tmp/batched-state*.json && mkdir -p .w2 \
    && tar --exclude=./.w2 --exclude="./$CARRY" -cf - . | tar -xf - -C .w2
  (export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
   tmo 540 make build $B $ONE FRESH=1 > "$LOG/gen_build_default.log" 2>&1; el default build rc=$?; engine_default 1) & P1=$!
  (export CUDA_VISIBLE_DEVICES=0 && cd .w2 && export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
   tmo 540 make build $B FRESH=1 GEN_PREFILL_BATCHES=$BATCHES > "$LOG/gen_build_batched.log" 2>&1; el batched build rc=$?) & P0=$!
  wait $P0; engine_batched 0; wait $P1
elif [ "$PHASE" = triton ]; then
  has_engine bench/tmp/default-state.json || { engine_default 1 & }
  has_engine bench/tmp/batched-state.json || { engine_batched 0 & }
  for j in $(jobs -p); do [ "$j" = "$WATCHDOG" ] || wait "$j"; done   # not the watchdog (env.sh): it sleeps to the end
  triton_default 1 ""; triton_batched 0 ""
else  # PHASE=triton2: the same runs in the other order, on the other GPUs
  triton_batched 1 2; triton_default 0 2
fi
finish
