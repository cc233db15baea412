# One GPU, call B of three (about 9.5 min, CALL_S=580), within 30 s of llm-1gpu-a.sh (build 1 of llm and llm_single,
# its engine phase): a second fresh llm_single build in .w2, alone on the GPU (its compile may autotune), measured
# beside build 1's llm as fresh build 2 (the report flags the shared multi build); then, side by side, llm's GPU tests
# followed by generate's, and a fresh generate build for call C's load run (its tuning shares the GPU with the tests:
# it is not a figure of record).
source bench/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0
T="TUNE_RUNS=${TUNE_RUNS:-3}"
(cd .w2 && tmo 200 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 $T BUILD_MODELS=llm_single \
  > "$LOG/b2_single.log" 2>&1); el llm_single build 2 rc=$?
rm -rf .w2/model_repository/llm/1 && cp -a model_repository/llm/1 .w2/model_repository/llm/1
mkdir -p .w2/bench/tmp && cp bench/tmp/state.json .w2/bench/tmp/
(cd .w2 && tmo 150 make bench PY=python3 $T BUILD_MODELS="llm llm_single" BENCH_ARGS="--phase engine --build-label 2 --decode-only" \
  > "$LOG/decode_b2.log" 2>&1); el decode of build 2 rc=$?
cp .w2/bench/tmp/state.json bench/tmp/state.json
(export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-tests
 tmo 200 python3 -m pytest -v -p no:cacheprovider tests/test_gpu.py > "$LOG/gpu_tests_llm.log" 2>&1; el llm GPU tests rc=$?
 tmo 400 python3 -m pytest -v -p no:cacheprovider tests/test_generation_gpu.py > "$LOG/gpu_tests_generate.log" 2>&1
 el generate GPU tests rc=$?) & P1=$!
TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen tmo 400 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 \
  BUILD_MODELS=generate > "$LOG/gen_build.log" 2>&1; el generate build rc=$?
wait $P1; finish
