# Issue 12's run of record, call 3 of 4 (CALL_S=560), within 30 s of call 2: llm built from scratch in .w2
# (build 2, its own inductor cache), where call 2 built llm_single's build 2. Call 4: llm-1gpu-c.sh (CALL_S=590).
source bench/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0
(cd .w2 && tmo 540 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 TUNE_RUNS=${TUNE_RUNS:-2} BUILD_MODELS=llm \
  > "$LOG/b2_llm.log" 2>&1); el llm build 2 rc=$?
finish
