# A short A/B of decode_steps at 64 streams (about 5 min on one H200: the build took 143 s): a small fresh build (decode bucket 64 only,
# prefill bucket 128, 512 positions: fewer compiles and captures), then the stream phase with decode_steps 4 and 1,
# each a fresh server, client/generate.py for SWEEP_S seconds. Not a run of record: the buckets are not the preset's.
source bench/gpu/env.sh
export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-ds
tmo 150 make build PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 BUILD_MODELS=generate GEN_DECODE_BUCKETS=64 \
  GEN_PREFILL_BUCKETS=128 GEN_CONTEXT=512 > "$LOG/ds_build.log" 2>&1; el small build rc=$?
# Not through `make bench-generate`, which would rebuild with the preset's buckets; the repo goes on PYTHONPATH
# as make puts it (client/generate.py imports llmprofiles: without it the first run of this script lost its clients).
PYTHONPATH=$PWD:$PYTHONPATH tmo 170 python3 -m bench.generate_bench --model gemma-3-1b --device cuda --phase stream --state bench/tmp/ds-state.json \
  --out-dir bench/tmp/ds --server-pythonpath /tmp/np1 --stream-intervals none --stream-variant decode_steps=4 \
  --stream-variant decode_steps=1 --stream-concurrency 64 --sweep-seconds ${SWEEP_S:-8} --port-base 18900 \
  > "$LOG/ds_stream.log" 2>&1; el stream phase rc=$?
finish
