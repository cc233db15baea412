# Issue 12's run of record, call 2 of 4 (CALL_S=560, about 520 s), within 30 s of call 1: llm_single built from
# scratch twice, each in an inductor cache of its own (build 1 here, build 2 in .w2; no timing in either build),
# then the full engine phase of build 1 (llm build 1 beside llm_single build 1) into bench/tmp/state.json.
source bench/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0
T="TUNE_RUNS=${TUNE_RUNS:-2}"
TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-single tmo 220 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 $T \
  BUILD_MODELS=llm_single > "$LOG/b1_single.log" 2>&1; el llm_single build 1 rc=$?
(cd .w2 && TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-single tmo 220 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda \
  FRESH=1 $T BUILD_MODELS=llm_single > "$LOG/b2_single.log" 2>&1); el llm_single build 2 rc=$?
tmo 240 make bench PY=python3 $T BUILD_MODELS="llm llm_single" BENCH_ARGS="--phase engine --build-label 1" \
  > "$LOG/llm_engine.log" 2>&1; el engine phase of build 1 rc=$?
finish
