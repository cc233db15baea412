# Issue 12 on one GPU, call B (about 8 min, CALL_S=520), within 30 s of call A: fresh build 2 of llm and llm_single
# in .w2 (its own inductor cache), then llm's GPU tests (tests/test_gpu.py) on build 1's tree.
source bench/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0
(cd .w2 && tmo 420 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 TUNE_RUNS=${TUNE_RUNS:-2} BUILD_MODELS="llm llm_single" \
  > "$LOG/b2_llm.log" 2>&1); el build 2 rc=$?
TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-tests tmo 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py \
  > "$LOG/gpu_tests_llm.log" 2>&1; el llm GPU tests rc=$?
finish
