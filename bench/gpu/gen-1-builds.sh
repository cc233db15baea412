# The generate-only runbook (bench/gpu/gen-*.sh), for a run that measures issue 11 alone; 1-4 are the full one.
# Call 1 (about 9.5-10 min on nvidia-h200-x2; CALL_S=590): fresh generate build 1 on GPU 1 and fresh build 2 on GPU 0
# (from a copy of the tree in .w2, its own inductor cache), in parallel. Two builds at once take about 8-9 min each
# (session 15: 486 s, of which 188 s the batch-1 tuning's three compiles and 228 s the warm-up's compiles, before
# batched prefill added one more compile of about 90 s), so their engine phases run at the start of call 2. A build
# cut by the call's end is not "up to date": gen-2 then refuses it rather than build again. Fire call 2 within 30 s
# of this one's end.
source bench/gpu/env.sh
{ nvidia-smi -L; nproc; python3 -c 'import torch; print(torch.__version__, torch.cuda.device_count())'; } > "$LOG/machine.log" 2>&1
rm -rf .w2 && mkdir -p .w2 && tar --exclude=./.w2 --exclude="./$CARRY" -cf - . | tar -xf - -C .w2
B="PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 BUILD_MODELS=generate"
(export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 575 make build $B > "$LOG/gen_build1.log" 2>&1; el generate build 1 rc=$?) & P1=$!
(export CUDA_VISIBLE_DEVICES=0 && cd .w2 && export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor-gen
 tmo 575 make build $B > "$LOG/gen_build2.log" 2>&1; el generate build 2 rc=$?) & P0=$!
wait $P0 $P1; finish
