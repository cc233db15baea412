# Issue 11's run of record on one GPU (nvidia-h200), every step in one process tree that outlives the device calls
# (started by `PIPELINE=bench/gpu/gen-rec-pipeline.sh bash bench/gpu/llm-rec-bg.sh`). Steps, each timed into
# bench/tmp/gpu-logs/steps.txt, most needed first, so that a budget cut short still leaves a report:
#   fresh build 1 of generate and its engine phase; the Triton phase on it at concurrency 1, 8, 32 and 64
#   (client/generate.py and perf_analyzer, first request after ready); the HF anchor; the report. Then fresh
#   build 2 in .w2 (its own inductor cache) and its engine phase, and the report again with both builds (engine
#   decode as their median, the spread). Then, with the time left, generate's GPU tests and the 300 s load run.
# Session 25, on the slowest host yet: the first report at 1,007 s; build 2 and its engine phase should take
# about 570 s more (build 1's times).
source bench/gpu/rec-common.sh
GEN_STATE=bench/tmp/generate-state.json
export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
timeout 600 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 BUILD_MODELS=generate > "$LOG/gen_build1.log" 2>&1
st build 1 rc=$?
timeout 240 make bench-generate PY=python3 BENCH_ARGS="--phase engine --state $GEN_STATE" > "$LOG/gen_engine1.log" 2>&1
st engine phase of build 1 rc=$?
SERVE="--server-pythonpath /tmp/np1 --port-base 18800"
timeout 400 make bench-generate PY=python3 BENCH_ARGS="--phase triton --state $GEN_STATE $SERVE \
  --perf-analyzer /tmp/site/bin/perf_analyzer --concurrency 1,8,32,64 --sweep-seconds 12 --perf-interval-ms 5000" \
  > "$LOG/gen_triton.log" 2>&1
st triton phase rc=$?
cp bench/tmp/generate/server.log "$LOG/server_triton.log" 2>/dev/null
timeout 300 make bench-generate PY=python3 BENCH_ARGS="--phase anchor --state bench/tmp/anchor-state.json --out-dir bench/tmp/anchor" \
  > "$LOG/gen_anchor.log" 2>&1
st anchor rc=$?
REPORT="python3 -m bench.generate_bench --phase report --state $GEN_STATE --merge bench/tmp/anchor-state.json"
$REPORT > "$LOG/gen_report.log" 2>&1
st report on build 1 rc=$?
(cd .w2 && export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 timeout 600 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 BUILD_MODELS=generate > "$LOG/gen_build2.log" 2>&1
 st build 2 rc=$?
 timeout 240 make bench-generate PY=python3 BENCH_ARGS="--phase engine --state $GEN_STATE" > "$LOG/gen_engine2.log" 2>&1
 st engine phase of build 2 rc=$?
 cp $GEN_STATE ../bench/tmp/generate-state-b2.json)
REPORT="$REPORT --other-build bench/tmp/generate-state-b2.json"
$REPORT > "$LOG/gen_report2.log" 2>&1
st report on both builds rc=$?
touch bench/tmp/pipeline.report
export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-tests
timeout 400 python3 -m pytest -v -p no:cacheprovider tests/test_generation_gpu.py > "$LOG/gpu_tests_generate.log" 2>&1
st generate GPU tests rc=$?
export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
timeout 420 make bench-generate PY=python3 BENCH_ARGS="--phase load --state $GEN_STATE $SERVE --load-seconds ${LOAD_S:-300}" \
  > "$LOG/gen_load.log" 2>&1
st load rc=$?
cp bench/tmp/generate/server.log "$LOG/server_load.log" 2>/dev/null
$REPORT > "$LOG/gen_report3.log" 2>&1
st report again rc=$?
touch bench/tmp/pipeline.done
