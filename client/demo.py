"""The main job: serve the built model repository, drive decode and prefill, compare, stop.

Starts the real tritonserver on 127.0.0.1, sends decode traffic over gRPC and
prefill traffic over HTTP to the multi-profile model ``llm``, then measures the
seed's comparison table (single-profile ``llm_single`` vs ``llm``) in one run,
prints which profile served what, and stops the server. Exits non-zero on any
error or profile mismatch. Run through ``make demo`` (which builds first).
"""

import argparse
import json
import sys

from llmprofiles.loadgen import Phase, compare_tables, load_table, run_compare, run_load
from llmprofiles.serving.launcher import TritonServer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port on 127.0.0.1")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port on 127.0.0.1")
    p.add_argument("--metrics-port", type=int, default=8002, help="metrics port on 127.0.0.1")
    p.add_argument("--requests", type=int, default=100, help="timed calls per regime (and per model in the comparison)")
    p.add_argument("--prefill-seq", type=int, default=128, help="prefill length")
    a = p.parse_args()

    with TritonServer(http_port=a.http_port, grpc_port=a.grpc_port, metrics_port=a.metrics_port) as server:
        print(f"tritonserver ready in {server.startup_s:.1f} s (HTTP {server.http_url}, gRPC {server.grpc_url}); "
              f"log: {server.log_path}\n")
        results = {}
        for regime, protocol, url, fraction in (("decode", "grpc", server.grpc_url, 1.0),
                                               ("prefill", "http", server.http_url, 0.0),
                                               ("mix", "grpc", server.grpc_url, 0.9)):
            r = run_load(url, protocol, "llm", decode_fraction=fraction, prefill_seq=a.prefill_seq,
                         concurrency=2, requests=a.requests)
            print(f"{regime} traffic on llm over {protocol} (2 clients, {a.requests} requests)")
            print(load_table(r) + "\n")
            results[regime] = r
        phases = [Phase("decode", 1), Phase("prefill", a.prefill_seq)]
        compare = run_compare(server.grpc_url, "grpc", {"single": ("llm_single", "single"), "multi": ("llm", "multi")},
                              phases, requests=a.requests)
        print(compare_tables(compare) + "\n")
    ok = compare["ok"] and all(r["ok"] for r in results.values())
    print("demo OK: every request served by its expected profile" if ok else "demo FAILED: errors or profile mismatches")
    print(json.dumps({"ok": ok, "traffic": {k: r["phases"] for k, r in results.items()},
                      "compare": compare["rows"]}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
