# The batch-1 attention projections' kernel (forward.PROJ_KERNEL) against inductor's reductions, and llm's MLP
# kernels, side by side (about 7.5 min on nvidia-h200-x2; CALL_S=450). GPU 0: the batch-1 step with and without
# the projections' kernel, twice each, in one process (bench/probes/decode_step.py); the batch-1 kernel table with
# it (bench/probes/step_kernels.py); the kernels' GPU tests. GPU 1: llm's decode variants with and without the MLP
# kernels (bench/decode_variants.py), then the MLP kernels at each block size (bench/probes/mlp_gemv.py). On one GPU
# (nvidia-h200, CALL_S=420) only GPU 0's part runs.
source bench/gpu/env.sh
{ nvidia-smi -L; nproc; python3 -c 'import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.device_count())'; } > "$LOG/machine.log" 2>&1
(export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-probe
 V=cdt+gemv+mlp,cdt+gemv+mlp+proj,cdt+gemv+mlp,cdt+gemv+mlp+proj
 tmo 210 python3 -m bench.probes.decode_step --out "$LOG/decode_step_proj.json" --forms whole --batches 1 --contexts 192,1900 \
   --b1-variants $V --batch-variants "" > "$LOG/decode_step_proj.log" 2>&1; el decode step A/B rc=$?
 tmo 80 python3 -m bench.probes.step_kernels --cases decode_b1 --sdpa-lengths "" --out "$LOG/step_kernels_proj.json" \
   > "$LOG/step_kernels_proj.log" 2>&1; el kernel table rc=$?
 export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-tests
 tmo 150 python3 -m pytest -q -p no:cacheprovider tests/test_mlp_kernel.py tests/test_decode_attention.py \
   > "$LOG/gpu_tests_kernels.log" 2>&1; el kernel GPU tests rc=$?) & P0=$!
[ "$(nvidia-smi -L | wc -l)" -lt 2 ] || (export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-llm
 tmo 330 make bench-decode PY=python3 BENCH_ARGS="--variants fused+gemv+cdt+sqa,fused+gemv+cdt+sqa+mlp --out $LOG/decode_variants_mlp.json" \
   > "$LOG/decode_variants_mlp.log" 2>&1; el llm decode variants rc=$?
 tmo 90 python3 -m bench.probes.mlp_gemv --out "$LOG/mlp_gemv.json" > "$LOG/mlp_gemv.log" 2>&1; el MLP block sizes rc=$?) & P1=$!
wait $P0 $P1; finish
