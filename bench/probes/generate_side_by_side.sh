#!/usr/bin/env bash
# The generate model of an older commit against this tree's, through tritonserver on the CPU, one after the
# other with the same client (bench/NOTES.md, session 6). From the repo root, after `make build`:
#   bash bench/probes/generate_side_by_side.sh 8e86aa2 8 32      # old commit, concurrency, max tokens
set -euo pipefail
old=${1:?old commit}; c=${2:-8}; n=${3:-32}
py=$PWD/.venv/bin/python
wt=$(mktemp -d)/old && git worktree add -q "$wt" "$old"
trap 'git worktree remove --force "$wt"' EXIT
(cd "$wt" && PYTHONPATH=$wt "$py" build/build_generate.py --model tiny --device cpu --out model_repository/generate >/dev/null)
run() {  # $1 tree, $2 label
  local repo; repo=$(mktemp -d); ln -s "$1/model_repository/generate" "$repo/generate"
  (cd "$1" && PYTHONPATH=$1 exec "$py" -m llmprofiles.serving.launcher --model-repository "$repo" \
     --http-port 19100 --grpc-port 19101 --metrics-port 19102 --work-dir "$repo-work" >"$repo/server.log" 2>&1) &
  local pid=$!
  for _ in $(seq 120); do curl -sf localhost:19100/v2/health/ready && break; sleep 1; done
  "$py" client/generate.py --url 127.0.0.1:19101 --concurrency "$c" --prompt-len 64 --max-tokens "$n" \
     --requests $((4 * c)) --warmup 1 --vocab 32000 2>"$repo/client.err" | tail -1 | "$py" -c "import json, sys
r = json.load(sys.stdin)
if 'error' in r: sys.exit('$2: ' + r['error'])
print('$2', 'ok' if r['ok'] else 'FAILED', 'tok/s %.0f' % r['output_tokens_per_s'],
      'TTFT p50 %.1f ITL p50 %.1f p99 %.1f ms' % (r['ttft']['p50_ms'], r['itl']['p50_ms'], r['itl']['p99_ms']))"
  kill "$pid"; wait "$pid" 2>/dev/null || true; sleep 3
}
for round in 1 2; do run "$wt" "old $old ($round)"; run "$PWD" "this tree ($round)"; done
