# Sourced by every bench/gpu/*.sh call on the GPU machine (run from the repo root; `carry: [".whl3"]`).
# Installs the carried Triton wheels and perf_analyzer into /tmp (kept while the machine stays warm),
# and defines `el` (elapsed seconds) and `pack` (everything worth keeping into one $OUT/out.tgz:
# at most 8 files come back from a call).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
CARRY=${CARRY:-.whl3}
if [ ! -x /tmp/site/bin/perf_analyzer ] || [ ! -d /tmp/np1/numpy ]; then
  mkdir -p /tmp/site /tmp/np1 && tar xJf "$CARRY"/pytriton-min.txz -C /tmp/site \
  && python3 -m pip install -q --no-index --no-deps --target /tmp/site "$CARRY"/perf_analyzer*.whl \
       "$CARRY"/tritonclient*.whl "$CARRY"/python_rapidjson*.whl "$CARRY"/protobuf*.whl \
  && python3 -m pip install -q --no-index --no-deps --target /tmp/np1 "$CARRY"/numpy*.whl || echo "SETUP FAILED"
fi
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
T0=$(date +%s)
# The device call is killed at 600 s, before `pack` if a phase overruns: every timeout is capped by what is left
# of CALL_S, and a watchdog packs at CALL_S whatever the phases have written by then.
END=$(( T0 + ${CALL_S:-570} ))
tmo() { local s=$(( END - $(date +%s) - 15 )); [ "$s" -lt "$1" ] || s=$1; shift
        if [ "$s" -le 0 ]; then echo "no time left for: $*"; return 124; fi; timeout "$s" "$@"; }
wait_for() { while [ ! -f "$1" ] && [ "$(date +%s)" -lt "$END" ]; do sleep 2; done; [ -f "$1" ]; }
LOG=$PWD/bench/tmp/gpu-logs; mkdir -p "$LOG"   # every log of the call; packed into $OUT/out.tgz at the end
GEN_STATE=bench/tmp/generate-state.json   # one generate state for every call (the default name holds the date)
el() { echo "[$(( $(date +%s) - T0 )) s] $*" >> "$OUT/times.txt"; }   # callers append rc=$? of the step
pack() {
  tar czf "$OUT/out.tgz" --ignore-failed-read bench/results bench/tmp/*.json bench/tmp/server.log bench/tmp/perf_analyzer \
      bench/tmp/generate/*.log bench/tmp/generate/perf* bench/tmp/anchor model_repository/*/1/manifest.json .w2/bench/tmp/generate/*.log \
      .w2/model_repository/*/1/manifest.json bench/tmp/gpu-logs 2>/dev/null  # relative: tar keeps the path
  cat "$OUT/times.txt"; for f in "$LOG"/*.log; do echo "== $f"; tail -n 3 "$f"; done
}
(sleep $(( END - $(date +%s) )); echo "[watchdog] $(( $(date +%s) - T0 )) s: packing before the call's end" >> "$OUT/times.txt"
 pack > /dev/null) & WATCHDOG=$!
finish() { kill "$WATCHDOG" 2>/dev/null; pack; }
