# Issue 12's run of record on one GPU (nvidia-h200), call 1 of 4 (CALL_S=560; 210-370 s of build): a copy of the
# tree without build outputs into .w2 (build 2's, call 3), then llm built from scratch (build 1). Fire each next
# call within 30 s of the last one's end: an idle machine is given back, and the builds with it. Sized on session
# 20's step times (bench/NOTES.md) less session 21's savings (two decode compiles, not three; 12 s less per model
# load): a slow machine needs about 1,700 s for the four, a fast one about 1,400 s. Not yet run.
source bench/gpu/env.sh
{ nvidia-smi -L; nproc; python3 -c 'import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.device_count())'; } > "$LOG/machine.log" 2>&1
export CUDA_VISIBLE_DEVICES=0
rm -rf .w2 && mkdir -p .w2 && tar --exclude=./.w2 --exclude=./.cache --exclude=./bench/tmp --exclude="./$CARRY" \
  --exclude=./model_repository/llm/1 --exclude=./model_repository/llm_single/1 --exclude=./model_repository/generate/1 -cf - . | tar -xf - -C .w2
tmo 540 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 TUNE_RUNS=${TUNE_RUNS:-2} BUILD_MODELS=llm \
  > "$LOG/b1_llm.log" 2>&1; el llm build 1 rc=$?
finish
