# Call 4 (about 8 min): the generate parts (anchor, load, stream, its GPU tests) with GEN=1 only, after
# bench/gpu/gen-1 and gen-2 (see 2-engines.sh). GPU 1: the generate load run (300 s at concurrency 64 with cancellations), then the stream
# phase (how responses are sent, over the build's defaults (send_budget_ms 2): send_threads 4, one server, about
# 55 s; STREAM_ARGS replaces it, e.g. "--stream-intervals 8 --stream-variant send_threads=4");
# GPU 0: with DV set, decode compile variants; the HF static-cache anchor (compiles about 70 s per batch size); llm's and
# generate's GPU tests. The anchor has its own state: merge it into the
# main one when writing the report:
#   python -m bench.generate_bench --phase report --state bench/tmp/generate-state.json --merge bench/tmp/anchor-state.json
source bench/gpu/env.sh
(export CUDA_VISIBLE_DEVICES=0
 # With DV set: decode compile variants side by side first, while the load run (not a speed figure) runs on GPU 1,
 # e.g. DV=fused+gemv+cdt+sqa,fused+gemv+cdt+sqa+pdl (about 100 s per variant)
 if [ -n "${DV:-}" ]; then TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-dv tmo 260 python3 -m bench.decode_variants --model gemma-3-1b \
   --variants "$DV" --out bench/tmp/decode_variants.json > "$LOG/decode_variants.log" 2>&1; el decode variants rc=$?; fi
 [ -z "${GEN:-}" ] || TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-anchor tmo 330 make bench-generate PY=python3 BENCH_ARGS="--phase anchor --state bench/tmp/anchor-state.json --out-dir bench/tmp/anchor" > "$LOG/gen_anchor.log" 2>&1; el anchor rc=$?
 tmo 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$LOG/gpu_tests_llm.log" 2>&1; el llm GPU tests rc=$?
 [ -z "${GEN:-}" ] || TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen tmo 120 python3 -m pytest -q -p no:cacheprovider tests/test_generation_gpu.py \
   tests/test_decode_attention.py > "$LOG/gpu_tests_generate.log" 2>&1; el generate GPU tests rc=$?) & P0=$!
[ -n "${GEN:-}" ] && (export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 420 make bench-generate PY=python3 BENCH_ARGS="--phase load --state $GEN_STATE --server-pythonpath /tmp/np1 --load-seconds ${LOAD_S:-300} --port-base 18800" > "$LOG/gen_load.log" 2>&1; el load rc=$?
 # How responses are sent, at concurrency 64: a server per variant (about 50 s each); the defaults are the triton phase's row.
 tmo 200 make bench-generate PY=python3 BENCH_ARGS="--phase stream --state $GEN_STATE --server-pythonpath /tmp/np1 --sweep-seconds 15 --port-base 18800 ${STREAM_ARGS:---stream-intervals none --stream-variant send_threads=4}" > "$LOG/gen_stream.log" 2>&1; el generate stream phase rc=$?) & P1=$!
wait $P0 $P1; finish
