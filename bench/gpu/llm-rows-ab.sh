# The next call for issue 12 (one GPU, nvidia-h200; about 8 min, CALL_S=480): llm's batch-1 decode compile with its
# norms kept in registers (+rows) and with generate's MLP kernels (+mlp), against the shipped compile, side by side
# in one process (bench/decode_variants.py); then each batch-1 matrix-vector kernel at every block size, with a few
# the autotuner does not try, against cuBLAS and inductor (bench/probes/mlp_gemv.py).
source bench/gpu/env.sh
{ nvidia-smi -L; nproc; python3 -c 'import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.device_count())'; } > "$LOG/machine.log" 2>&1
export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-llm
V=fused+gemv+cdt+sqa,fused+gemv+cdt+sqa+rows,fused+gemv+cdt+sqa+mlp,fused+gemv+cdt+sqa+mlp+rows
tmo 330 make bench-decode PY=python3 BENCH_ARGS="--variants $V --out $LOG/decode_variants_rows.json" \
  > "$LOG/decode_variants_rows.log" 2>&1; el llm decode variants rc=$?
tmo 120 python3 -m bench.probes.mlp_gemv --extra-configs 2x2048x4,2x2048x8,4x1024x4,4x1024x8 --out "$LOG/mlp_gemv.json" \
  > "$LOG/mlp_gemv.log" 2>&1; el matrix-vector block sizes rc=$?
finish
