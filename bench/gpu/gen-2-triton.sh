# Call 2 (about 7 min): the generate Triton phase on GPU 1 (first request after ready, the sweep 1/8/32/64 with
# client/generate.py and perf_analyzer, the scheduler thread's time per step), then the stream phase's A/B at
# concurrency 64 (a fresh server per variant: STREAM_VARIANTS, each a --stream-variant); nothing else runs on the host.
source bench/gpu/env.sh
# decode_steps is 2 by default on a GPU (session 13's A/B, before the ring of input buffers): each variant one side
# of it, at concurrency 1 and then 64 on the same server.
VARIANTS=${STREAM_VARIANTS:-"decode_steps=1 decode_steps=4"}
(export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 300 make bench-generate PY=python3 BENCH_ARGS="--phase triton --state $GEN_STATE --server-pythonpath /tmp/np1 --perf-analyzer /tmp/site/bin/perf_analyzer --sweep-seconds 15 --perf-interval-ms 5000 --port-base 18800" > "$LOG/gen_triton.log" 2>&1; el generate triton phase rc=$?
 tmo 230 make bench-generate PY=python3 BENCH_ARGS="--phase stream --state $GEN_STATE --server-pythonpath /tmp/np1 --stream-intervals none --stream-also 1 $(for v in $VARIANTS; do printf -- '--stream-variant %s ' "$v"; done) --sweep-seconds 15 --port-base 18900" > "$LOG/gen_stream.log" 2>&1; el generate stream phase rc=$?) & P1=$!
wait $P1; finish
