"""Compare per-call latency of the single-profile and the multi-profile model on one server.

Decode (seq 1) and prefill at each ``--prefill-seqs`` length are sent to both
models from one client, batch 1, alternating the model on every call so machine
noise hits both alike. Prints the median table of the multi-profile docs and
which profile served each cell; exits non-zero on any error or profile
mismatch. The last line of stdout is one JSON object (medians and p99s).

    python client/compare.py --protocol grpc --requests 200 --prefill-seqs 128,256
"""

import argparse
import json
import logging
import sys

from llmprofiles.loadgen import DEFAULT_PORTS, PROTOCOLS, Phase, compare_tables, request_errors, run_compare


def seq_list(text: str) -> list[int]:
    try:
        seqs = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ints, e.g. 128,256") from None
    if not seqs:
        raise argparse.ArgumentTypeError("give at least one prefill length, e.g. 128")
    return seqs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="tritonclient protocol")
    p.add_argument("--url", default=None,
                   help="host:port of the server (default 127.0.0.1 on port 8001 for grpc, 8000 for http)")
    p.add_argument("--single-model", default="llm_single", help="baseline model, built from profile set 'single'")
    p.add_argument("--multi-model", default="llm", help="candidate model, built from profile set 'multi'")
    p.add_argument("--requests", type=int, default=200, help="timed calls per model per regime")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls per model per regime")
    p.add_argument("--prefill-seqs", type=seq_list, default=[128], help="comma-separated prefill lengths")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    url = a.url or f"127.0.0.1:{DEFAULT_PORTS[a.protocol]}"
    models = {"single": (a.single_model, "single"), "multi": (a.multi_model, "multi")}
    phases = [Phase("decode", 1), *(Phase("prefill", s) for s in a.prefill_seqs)]
    try:
        result = run_compare(url, a.protocol, models, phases, requests=a.requests, warmup=a.warmup, seed=a.seed)
    except (ValueError, *request_errors()) as e:  # a length no profile holds, or the server refused the warm-up
        print(f"compare: {e}", file=sys.stderr)
        print(json.dumps({"ok": False, "error": str(e)}))
        sys.exit(1)

    print(compare_tables(result))
    for r in result["rows"]:
        for label, cell in r["cells"].items():
            if cell["errors"] or cell["mismatches"]:
                print(f"{r['label']} on {cell['model']}: {cell['errors']} errors, {cell['mismatches']} mismatches "
                      f"(expected profile {cell['expected_profile']}) {cell.get('error_samples', '')}")
    print("OK" if result["ok"] else "FAILED: errors or profile mismatches")
    print(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
