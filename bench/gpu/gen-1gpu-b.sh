# On one GPU (nvidia-h200; about 9 min, CALL_S=560): build 2, a fresh generate build from a copy of the tree (.w2,
# its own inductor cache; without bench/tmp, where build 1's state is), and its engine phase into
# bench/tmp/generate-state-b2.json (`--other-build` when writing the report); then generate's and the kernels' GPU
# tests.
source bench/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0
rm -rf .w2 && mkdir -p .w2 && tar --exclude=./.w2 --exclude=./.cache --exclude=./bench/tmp --exclude=./model_repository/generate/1 --exclude="./$CARRY" -cf - . | tar -xf - -C .w2
(cd .w2 && export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 360 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 BUILD_MODELS=generate > "$LOG/gen_build2.log" 2>&1; el generate build 2 rc=$?
 tmo 120 make bench-generate PY=python3 BENCH_ARGS="--phase engine --state $GEN_STATE" > "$LOG/gen_engine2.log" 2>&1; el generate engine phase 2 rc=$?
 cp bench/tmp/generate-state.json ../bench/tmp/generate-state-b2.json)
export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-tests
tmo 200 python3 -m pytest -q -p no:cacheprovider tests/test_generation_gpu.py tests/test_mlp_kernel.py \
  > "$LOG/gpu_tests_generate.log" 2>&1; el generate and kernel GPU tests rc=$?
finish
