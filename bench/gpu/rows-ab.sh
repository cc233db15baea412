# The batch-1 step's single-row reductions kept persistent (fusion.PERSISTENT_ROWS, forward.PERSISTENT_ROWS then) and inductor's multi-kernel,
# against the step as it is, side by side in one process, twice each (bench/probes/decode_step.py); then the batch-1
# kernel table with PERSISTENT_ROWS=4096 (bench/probes/step_kernels.py). One GPU, about 5 min (CALL_S=320).
source bench/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-probe
V=cdt+gemv+mlp+proj,cdt+gemv+mlp+proj+rows,cdt+gemv+mlp+proj+mk,cdt+gemv+mlp+proj,cdt+gemv+mlp+proj+rows,cdt+gemv+mlp+proj+mk
tmo 250 python3 -m bench.probes.decode_step --out "$LOG/decode_step_rows.json" --forms whole --batches 1 --contexts 192,1900 \
  --b1-variants $V --batch-variants "" > "$LOG/decode_step_rows.log" 2>&1; el decode step A/B rc=$?
tmo 80 python3 -c 'import runpy, sys; from llmprofiles.runtimes import fusion; fusion.PERSISTENT_ROWS = 4096
sys.argv = ["step_kernels", "--cases", "decode_b1", "--sdpa-lengths", "", "--out", sys.argv[1]]
runpy.run_module("bench.probes.step_kernels", run_name="__main__")' "$LOG/step_kernels_rows.json" > "$LOG/step_kernels_rows.log" 2>&1
el kernel table rc=$?
finish
