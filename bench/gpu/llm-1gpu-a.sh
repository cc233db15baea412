# Issue 12 on one GPU (nvidia-h200), call A of three (about 9 min, CALL_S=570): a copy of the tree without build
# outputs into .w2 (build 2's, call B), then fresh build 1 of llm and llm_single, then the full engine phase of
# build 1 (decode and prefill, llm against llm_single, recorded as fresh build 1). Fire call B within 30 s of this
# call's end: a machine left idle is given back, and the builds with it.
source bench/gpu/env.sh
{ nvidia-smi -L; nproc; python3 -c 'import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.device_count())'; } > "$LOG/machine.log" 2>&1
export CUDA_VISIBLE_DEVICES=0
rm -rf .w2 && mkdir -p .w2 && tar --exclude=./.w2 --exclude=./.cache --exclude=./bench/tmp --exclude="./$CARRY" \
  --exclude=./model_repository/llm/1 --exclude=./model_repository/llm_single/1 --exclude=./model_repository/generate/1 -cf - . | tar -xf - -C .w2
tmo 420 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 TUNE_RUNS=${TUNE_RUNS:-2} BUILD_MODELS="llm llm_single" \
  > "$LOG/b1_llm.log" 2>&1; el build 1 rc=$?
tmo 170 make bench PY=python3 TUNE_RUNS=${TUNE_RUNS:-2} BUILD_MODELS="llm llm_single" BENCH_ARGS="--phase engine --build-label 1" \
  > "$LOG/llm_engine.log" 2>&1; el llm engine phase rc=$?
finish
