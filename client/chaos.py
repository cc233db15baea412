"""Fault injection under load (``make chaos``): kill the server and a backend stub several times, measure recovery.

Starts the supervised server (as ``make serve`` does) on free ports over the built
``llm`` and ``llm_single`` models, keeps ``--clients`` threads sending seq-1
requests to ``llm``, and injects the faults in turn. For each one it reports the
time from the fault to the first good answer, the requests that failed during
the outage, whether readiness (client/health.py's probe) said not-ready during
it, and the requests that failed after recovery (the target is none). Exits
non-zero if any request was lost after recovery or readiness lied. The last line
of stdout is one JSON object::

    python client/chaos.py --faults kill-server,kill-stub,kill-server,kill-stub --clients 2
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from llmprofiles.serving.faults import FAULTS, Supervised, infer_ok, recover

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llm_only_repo(dest: Path) -> Path:
    """A repository of symlinks to the built llm models only, so no other model in the folder can stop the start."""
    dest.mkdir(parents=True, exist_ok=True)
    for m in ("llm", "llm_single"):
        (dest / m).symlink_to(ROOT / "model_repository" / m)
    return dest


class Load:
    """``clients`` threads sending seq-1 requests; every answer is logged as (monotonic time, ok)."""

    def __init__(self, url: str, clients: int):
        self.url, self.log, self._stop = url, [], threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        while not self._stop.is_set():
            ok = infer_ok(self.url, timeout_s=10.0)
            self.log.append((time.monotonic(), ok))
            if not ok:
                time.sleep(0.2)  # a refused connection returns at once; do not starve the restarting server

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=15)

    def between(self, t0: float, t1: float) -> tuple[int, int]:
        """(good, failed) answers that came back in [t0, t1)."""
        answers = [ok for t, ok in list(self.log) if t0 <= t < t1]
        return sum(answers), len(answers) - sum(answers)


def main() -> int:
    p = argparse.ArgumentParser(description="Kill the server and backend stubs under load; report recovery.")
    p.add_argument("--faults", default="kill-server,kill-stub,kill-server,kill-stub",
                   help=f"comma-separated, in order, from {sorted(FAULTS)}")
    p.add_argument("--clients", type=int, default=2, help="threads sending requests throughout")
    p.add_argument("--settle-s", type=float, default=5.0, help="seconds of load after each recovery, counted as 'after'")
    a = p.parse_args()
    faults = [f for f in a.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        p.error(f"unknown faults {sorted(unknown)}; choose from {sorted(FAULTS)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        repo = llm_only_repo(Path(tmp) / "repo")
        ports = (free_port(), free_port(), free_port())
        print(f"starting the supervised server on HTTP {ports[0]} ...", flush=True)
        with Supervised(repo, ports, Path(tmp) / "work") as s, Load(s.http_url, a.clients) as load:
            time.sleep(a.settle_s)
            good0, failed0 = load.between(0, time.monotonic())
            print(f"baseline: {good0} good, {failed0} failed", flush=True)
            for i, fault in enumerate(faults, 1):
                t_fault = time.monotonic()
                r = recover(s, fault)
                t_back = t_fault + r["recovery_s"]
                time.sleep(a.settle_s)
                _, during = load.between(t_fault, t_back)
                good_after, lost = load.between(t_back + 0.5, time.monotonic())  # 0.5 s: answers already in flight
                r.update(round=i, failed_during_outage=during, good_after=good_after, lost_after_recovery=lost)
                rows.append(r)
                print(f"{i:>2} {fault:<13} recovery {r['recovery_s']:6.1f} s  failed during {during:4d}  "
                      f"ready during outage {r['ready_during_outage']!s:<5}  lost after {lost}  ({r['cause']})", flush=True)
            total_good, total_failed = load.between(0, time.monotonic())
    recoveries = [r["recovery_s"] for r in rows]
    summary = {
        "faults": len(rows), "clients": a.clients, "requests_good": total_good, "requests_failed": total_failed,
        "baseline_failed": failed0,
        "recovery_s": recoveries, "recovery_s_max": max(recoveries, default=None),
        "failed_during_outages": [r["failed_during_outage"] for r in rows],
        "lost_after_recovery": sum(r["lost_after_recovery"] for r in rows),
        "readiness_false_during_every_outage": all(not r["ready_during_outage"] for r in rows),
        "readiness_true_after_every_recovery": all(r["ready_after"] for r in rows),
        "restarts": rows[-1]["restarts"] if rows else 0, "causes": [r["cause"] for r in rows],
    }
    ok = (summary["lost_after_recovery"] == 0 and failed0 == 0 and summary["readiness_false_during_every_outage"]
          and summary["readiness_true_after_every_recovery"])
    print(json.dumps({"ok": ok, **summary}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
