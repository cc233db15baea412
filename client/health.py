"""Readiness and liveness probe: one tiny real inference per model (an exec probe for Kubernetes or systemd).

Exits 0 when every model serves; otherwise exits 1 and prints one line per failing
model, with the reason. ``--mode live`` fails only on what a restart fixes (no
server, a dead backend stub, a hung model), so a liveness probe does not restart
the service for a request-level problem. Standard library only, so it runs in the
server's own environment::

    python client/health.py --url 127.0.0.1:8000                 # readiness, every model in the repository index
    python client/health.py --mode live --timeout-s 10           # liveness
    python client/health.py --models llm,llm_single --json       # a fixed list; one JSON line
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from llmprofiles.serving.health import probe, verdict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Probe tritonserver with one real inference per model; exit 0 if all serve.")
    p.add_argument("--url", default="127.0.0.1:8000", help="the server's HTTP address, host:port")
    p.add_argument("--models", default="", help="comma-separated models to probe (default: every model in the repository index)")
    p.add_argument("--mode", choices=["ready", "live"], default="ready",
                   help="ready: fail on any model that cannot serve; live: fail only on what a restart fixes")
    p.add_argument("--timeout-s", type=float, default=5.0, help="timeout of each HTTP call, in seconds")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    results = probe(a.url, [m for m in a.models.split(",") if m] or None, a.timeout_s)
    failing = verdict(results, a.mode)
    if a.json:
        print(json.dumps({"ok": not failing, "mode": a.mode, "seconds": round(time.perf_counter() - t0, 3),
                          "models": {r.model: {"ok": r.ok, "reason": r.reason, "ms": round(r.ms, 1)} for r in results}}))
    else:
        for r in failing:
            print(f"{r.model}: {r.reason}")
        if not failing:
            print(f"{a.mode}: {', '.join(r.model for r in results) or 'no models'} serve")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
