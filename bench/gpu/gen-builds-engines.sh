# Two fresh generate builds and their engine phases in one call (about 9.5 min on nvidia-h200-x2; CALL_S=575), now
# that a build takes about 4-5 min (session 17: one trace of the fresh prefill, forward.compile_dynamic). Build 1 on
# GPU 1 into the run's state, build 2 on GPU 0 (from a copy of the tree in .w2, its own inductor cache) into
# bench/tmp/generate-state-b2.json: `--other-build` when writing the report. Then GPU 0 runs the MLP kernels' GPU
# tests. gen-triton-probes.sh is the next call (within 30 s: the builds stay on the warm machine).
source bench/gpu/env.sh
{ nvidia-smi -L; nproc; python3 -c 'import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.device_count())'; } > "$LOG/machine.log" 2>&1
rm -rf .w2 && mkdir -p .w2 && tar --exclude=./.w2 --exclude="./$CARRY" -cf - . | tar -xf - -C .w2
B="PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 BUILD_MODELS=generate"
E="--phase engine --state $GEN_STATE"
(export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 400 make build $B > "$LOG/gen_build1.log" 2>&1; el generate build 1 rc=$?
 tmo 200 make bench-generate PY=python3 BENCH_ARGS="$E" > "$LOG/gen_engine.log" 2>&1; el generate engine phase 1 rc=$?) & P1=$!
(export CUDA_VISIBLE_DEVICES=0 && cd .w2 && export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 400 make build $B > "$LOG/gen_build2.log" 2>&1; el generate build 2 rc=$?
 tmo 200 make bench-generate PY=python3 BENCH_ARGS="$E" > "$LOG/gen_engine2.log" 2>&1; el generate engine phase 2 rc=$?
 cp bench/tmp/generate-state.json ../bench/tmp/generate-state-b2.json
 tmo 120 python3 -m pytest -q -p no:cacheprovider tests/test_mlp_kernel.py > "$LOG/gpu_tests_mlp.log" 2>&1; el MLP kernel GPU tests rc=$?) & P0=$!
wait $P0 $P1; finish
