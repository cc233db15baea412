# The A/B of decode_steps (about 8 min on one H200): a fresh build with the preset's buckets while generate's GPU
# tests share the GPU, then the stream phase: one fresh server per DS_VARIANTS value, client/generate.py at
# concurrency 1 and then 64 on each, SWEEP_S seconds each. The build stays for the next call (within 30 s).
source bench/gpu/env.sh
export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
rm -f bench/tmp/tests.done
(export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-tests
 tmo 200 python3 -m pytest -q -p no:cacheprovider tests/test_generation_gpu.py tests/test_decode_attention.py \
   > "$LOG/gpu_tests_generate.log" 2>&1; el generate GPU tests rc=$?; touch bench/tmp/tests.done) & P0=$!
tmo 520 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 BUILD_MODELS=generate > "$LOG/gen_build.log" 2>&1
el generate build rc=$?
wait_for bench/tmp/tests.done
VS=$(for k in ${DS_VARIANTS:-1 2 4 8}; do printf -- '--stream-variant decode_steps=%s ' "$k"; done)
tmo 400 make bench-generate PY=python3 BENCH_ARGS="--phase stream --state bench/tmp/ds-state.json --out-dir bench/tmp/ds \
  --server-pythonpath /tmp/np1 --stream-intervals none $VS --stream-concurrency 64 --stream-also 1 \
  --sweep-seconds ${SWEEP_S:-8} --port-base 18900" > "$LOG/ds_stream.log" 2>&1; el stream phase rc=$?
wait $P0; finish
