# Issue 12's run of record on one GPU (nvidia-h200) in about 1,600 s, as calls that wait on one background
# pipeline (bench/gpu/llm-rec-pipeline.sh, see its header). The first call starts it; each later call, fired
# within 30 s of the last, waits until it is done or the call's time is up, and packs what is there. With
# CONTINUE=1 a call starts nothing: a machine that went cold between calls holds no pipeline, and the call
# returns at once instead of building again.
#   CALL_S=580 bash bench/gpu/llm-rec-bg.sh               # call 1
#   CONTINUE=1 CALL_S=580 bash bench/gpu/llm-rec-bg.sh    # calls 2, 3, ... until steps.txt shows the Triton phase
# PIPELINE names another pipeline to run so: bench/gpu/gen-rec-pipeline.sh is issue 11's (generate's) run of record.
# UNTIL=report makes a call return once gen-rec-pipeline.sh has written its report on both builds
# (bench/tmp/pipeline.report), not waiting for the GPU tests and the load run after it.
source bench/gpu/env.sh
PIPELINE=${PIPELINE:-bench/gpu/llm-rec-pipeline.sh}
P=bench/tmp/pipeline
if [ ! -f $P.pid ]; then
  if [ -n "${CONTINUE:-}" ]; then el "no pipeline on this machine (it went cold): nothing started"; finish; exit 0; fi
  setsid nohup bash "$PIPELINE" > "$LOG/pipeline.log" 2>&1 < /dev/null & echo $! > $P.pid
  el "pipeline started, pid $(cat $P.pid)"
fi
UNTIL=${UNTIL:-done}
while [ ! -f $P.$UNTIL ] && [ ! -f $P.done ] && kill -0 "$(cat $P.pid)" 2>/dev/null && [ "$(date +%s)" -lt $(( END - 25 )) ]; do sleep 5; done
if [ -f $P.done ]; then at=done; elif [ -f $P.$UNTIL ]; then at="at $UNTIL"
elif kill -0 "$(cat $P.pid)" 2>/dev/null; then at=running; else at="ended early"; fi
el "pipeline $at"
cat "$LOG/steps.txt" >> "$OUT/times.txt" 2>/dev/null
finish
