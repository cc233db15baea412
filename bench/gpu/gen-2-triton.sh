# Call 2 (about 8.5-9 min; CALL_S=560): the engine phase of both builds of call 1 at once (build 1 on GPU 1 into the
# run's state, build 2 on GPU 0 into its own: `--other-build` when writing the report, the spread), then the
# generate Triton phase on GPU 1 alone (first request after ready, the sweep 1/8/32/64 with client/generate.py and
# perf_analyzer, the scheduler thread's time per step). STREAM_VARIANTS (e.g. "decode_steps=1 decode_steps=4"): then
# the stream phase's A/B at concurrency 1 and 64, a fresh server per variant (another call's time: CALL_S and the
# device call's 600 s allow it only with a short sweep).
source bench/gpu/env.sh
# A build cut in call 1 has no inputs hash in its manifest: make would build it again (8 minutes). Refuse it instead.
built() { python3 -c "import json,sys; sys.exit(0 if json.load(open('$1/model_repository/generate/1/manifest.json')).get('inputs_hash') else 1)" 2>/dev/null; }
built . || { el "build 1 is not complete: run gen-1 again"; finish; exit 1; }
built .w2 || { el "build 2 is not complete: its engine phase is skipped"; NO_B2=1; }
E="--phase engine --state $GEN_STATE"
(export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 220 make bench-generate PY=python3 BENCH_ARGS="$E" > "$LOG/gen_engine.log" 2>&1; el generate engine phase 1 rc=$?) & P1=$!
[ -n "${NO_B2:-}" ] || (export CUDA_VISIBLE_DEVICES=0 && cd .w2 && export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 220 make bench-generate PY=python3 BENCH_ARGS="$E" > "$LOG/gen_engine2.log" 2>&1; el generate engine phase 2 rc=$?
 cp bench/tmp/generate-state.json ../bench/tmp/generate-state-b2.json) & P0=$!
wait $P0 $P1
(export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 320 make bench-generate PY=python3 BENCH_ARGS="--phase triton --state $GEN_STATE --server-pythonpath /tmp/np1 --perf-analyzer /tmp/site/bin/perf_analyzer --sweep-seconds 15 --perf-interval-ms 5000 --port-base 18800" > "$LOG/gen_triton.log" 2>&1; el generate triton phase rc=$?
 cp bench/tmp/generate/server.log "$LOG/server_triton.log" 2>/dev/null
 [ -z "${STREAM_VARIANTS:-}" ] || { tmo 230 make bench-generate PY=python3 BENCH_ARGS="--phase stream --state $GEN_STATE --server-pythonpath /tmp/np1 --stream-intervals none --stream-also 1 $(for v in $STREAM_VARIANTS; do printf -- '--stream-variant %s ' "$v"; done) --sweep-seconds 10 --port-base 18900" > "$LOG/gen_stream.log" 2>&1; el generate stream phase rc=$?; }) & P1=$!
wait $P1; finish
