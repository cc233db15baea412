# On one GPU (nvidia-h200; about 9.5 min, CALL_S=580): a fresh generate build (build 1), its engine phase, then its
# Triton phase at concurrency 1 and 64 (client/generate.py and perf_analyzer, first request after ready) into the
# run's state. gen-1gpu-b.sh makes build 2.
source bench/gpu/env.sh
{ nvidia-smi -L; nproc; python3 -c 'import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.device_count())'; } > "$LOG/machine.log" 2>&1
export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
tmo 360 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 BUILD_MODELS=generate > "$LOG/gen_build1.log" 2>&1; el generate build 1 rc=$?
tmo 120 make bench-generate PY=python3 BENCH_ARGS="--phase engine --state $GEN_STATE" > "$LOG/gen_engine.log" 2>&1; el generate engine phase 1 rc=$?
tmo 200 make bench-generate PY=python3 BENCH_ARGS="--phase triton --state $GEN_STATE --server-pythonpath /tmp/np1 --perf-analyzer /tmp/site/bin/perf_analyzer --concurrency 1,64 --sweep-seconds 12 --perf-interval-ms 5000 --port-base 18800" > "$LOG/gen_triton.log" 2>&1; el generate triton phase rc=$?
cp bench/tmp/generate/server.log "$LOG/server_triton.log" 2>/dev/null
finish
