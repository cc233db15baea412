# Call 1 (about 6 min on nvidia-h200-x2): fresh build 1 of llm on GPU 0 and fresh build 2 on GPU 1, from a
# copy of the tree in .w2 (its own inductor cache), in parallel. Fire call 2 within 30 s of this one's end:
# a machine left idle is given back, and the builds with it.
source bench/gpu/env.sh
{ nvidia-smi -L; nproc; python3 -c 'import torch; print(torch.__version__, torch.cuda.device_count())'; } > "$LOG/machine.log" 2>&1
rm -rf .w2 && mkdir -p .w2 && tar --exclude=./.w2 --exclude="./$CARRY" -cf - . | tar -xf - -C .w2
B="PY=python3 MODEL=gemma-3-1b DEVICE=cuda FRESH=1 TUNE_RUNS=${TUNE_RUNS:-2} BUILD_MODELS=llm"
(CUDA_VISIBLE_DEVICES=0 tmo 560 make build $B > "$LOG/b1_llm.log" 2>&1; echo "rc=$?" >> "$LOG/b1_llm.log"; el build 1) & P0=$!
(cd .w2 && CUDA_VISIBLE_DEVICES=1 tmo 560 make build $B > "$LOG/b2_llm.log" 2>&1; echo "rc=$?" >> "$LOG/b2_llm.log"; el build 2) & P1=$!
wait $P0 $P1; finish
