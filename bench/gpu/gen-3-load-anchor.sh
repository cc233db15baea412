# Call 3 (about 8 min; CALL_S=520: the GPU tests now compile the tuning, batched prefill and graph_greedy cases): GPU 1: the generate load run (300 s at concurrency 64 with cancellations); GPU 0: the HF
# static-cache anchor (its own state: --merge it when writing the report), then generate's GPU tests.
source bench/gpu/env.sh
(export CUDA_VISIBLE_DEVICES=0
 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-anchor tmo 330 make bench-generate PY=python3 BENCH_ARGS="--phase anchor --state bench/tmp/anchor-state.json --out-dir bench/tmp/anchor" > "$LOG/gen_anchor.log" 2>&1; el anchor rc=$?
 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen tmo 340 python3 -m pytest -q -p no:cacheprovider tests/test_generation_gpu.py \
   tests/test_decode_attention.py > "$LOG/gpu_tests_generate.log" 2>&1; el generate GPU tests rc=$?) & P0=$!
(export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 420 make bench-generate PY=python3 BENCH_ARGS="--phase load --state $GEN_STATE --server-pythonpath /tmp/np1 --load-seconds ${LOAD_S:-300} --port-base 18800" > "$LOG/gen_load.log" 2>&1; el load rc=$?) & P1=$!
wait $P0 $P1; finish
