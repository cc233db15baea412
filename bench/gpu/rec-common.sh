# Sourced first by the run-of-record pipelines (llm-rec-pipeline.sh, gen-rec-pipeline.sh): GPU 0, the log dir, `st`
# (a step's seconds since the start, into steps.txt), the machine's description, and a copy of the tree without
# build outputs or caches into .w2, where the second fresh build runs.
set -u
export CUDA_VISIBLE_DEVICES=0
LOG=$PWD/bench/tmp/gpu-logs; mkdir -p "$LOG"
T0=$(date +%s)
st() { echo "[$(( $(date +%s) - T0 )) s] $*" >> "$LOG/steps.txt"; }
{ nvidia-smi -L; nproc; python3 -c 'import torch, triton; print(torch.__version__, triton.__version__)'; } > "$LOG/machine.log" 2>&1
rm -rf .w2 && mkdir -p .w2 && tar --exclude=./.w2 --exclude=./.cache --exclude=./bench/tmp --exclude="./${CARRY:-.whl3}" \
  --exclude=./model_repository/llm/1 --exclude=./model_repository/llm_single/1 --exclude=./model_repository/generate/1 \
  -cf - . | tar -xf - -C .w2
st start
