# Call 4 (about 6.5 min): GPU 1: the generate load run (300 s at concurrency 64 with cancellations);
# GPU 0: the HF static-cache anchor (compiles about 70 s per batch size), with its own state: merge it into the
# main one when writing the report: python -m bench.generate_bench --phase report --merge bench/tmp/anchor-state.json
source bench/gpu/env.sh
(export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-anchor
 timeout 330 make bench-generate PY=python3 BENCH_ARGS="--phase anchor --state bench/tmp/anchor-state.json --out-dir bench/tmp/anchor" > "$LOG/gen_anchor.log" 2>&1; el anchor) &
(export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 timeout 420 make bench-generate PY=python3 BENCH_ARGS="--phase load --server-pythonpath /tmp/np1 --load-seconds ${LOAD_S:-300} --port-base 18800" > "$LOG/gen_load.log" 2>&1; el load) &
wait; pack
