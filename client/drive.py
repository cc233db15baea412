"""Drive decode, prefill or mixed traffic at a Triton ``llm`` model and check who served it.

Every response's ``profile_index`` must equal the profile the project's profile
set chooses for the request's shapes (or the one pinned with ``--profile``), so
this is also a smoke test: it exits non-zero on any error or mismatch. The last
line of stdout is one JSON object.

    python client/drive.py --regime mix --decode-fraction 0.9 --protocol grpc --concurrency 4 --requests 200
    python client/drive.py --regime prefill --prefill-seq 256 --protocol http --model llm_single --duration-s 30
"""

import argparse
import json
import logging
import sys

from llmprofiles.loadgen import DEFAULT_PORTS, PROTOCOLS, load_table, request_errors, run_load
from llmprofiles.profiles.sets import PROFILE_SETS

REGIMES = ("decode", "prefill", "mix")


def profile_choices() -> list[str]:
    names = dict.fromkeys(n for ps in PROFILE_SETS.values() for n in ps.names)
    indices = range(max(len(ps) for ps in PROFILE_SETS.values()))
    return ["auto", *names, *(str(i) for i in indices)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--regime", choices=REGIMES, default="mix",
                   help="decode: seq 1 only; prefill: seq --prefill-seq only; mix: both, split by --decode-fraction")
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="tritonclient protocol")
    p.add_argument("--url", default=None,
                   help="host:port of the server (default 127.0.0.1 on port 8001 for grpc, 8000 for http)")
    p.add_argument("--model", default="llm", help="Triton model name")
    p.add_argument("--profile-set", choices=list(PROFILE_SETS), default=None,
                   help="profile set the model was built from (default: single for llm_single, else multi)")
    p.add_argument("--profile", choices=profile_choices(), default="auto",
                   help="optimization_profile sent with each request; auto lets the server choose by first-fit")
    p.add_argument("--concurrency", type=int, default=4, help="client threads, one connection each")
    p.add_argument("--requests", type=int, default=200, help="timed requests in total, over all threads")
    p.add_argument("--duration-s", type=float, default=None, help="run for this many seconds instead of --requests")
    p.add_argument("--prefill-seq", type=int, default=128, help="sequence length of prefill requests")
    p.add_argument("--decode-fraction", type=float, default=0.9,
                   help="share of decode requests in --regime mix, in [0, 1]")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per phase per thread before timing")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    p.add_argument("--vocab", type=int, default=None,
                   help="token ids are drawn from [0, vocab) (default: the logits width the server returns)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    url = a.url or f"127.0.0.1:{DEFAULT_PORTS[a.protocol]}"
    decode_fraction = {"decode": 1.0, "prefill": 0.0, "mix": a.decode_fraction}[a.regime]
    bound = f"{a.duration_s:g} s" if a.duration_s is not None else f"{a.requests} requests"
    print(f"drive: {a.regime} on {a.model} over {a.protocol} {url}, {a.concurrency} threads, {bound}, "
          f"profile {a.profile}")
    try:
        result = run_load(url, a.protocol, a.model, decode_fraction=decode_fraction, prefill_seq=a.prefill_seq,
                          concurrency=a.concurrency, requests=a.requests, duration_s=a.duration_s,
                          profile_set=a.profile_set, profile=a.profile, warmup=a.warmup, seed=a.seed, vocab=a.vocab)
    except (ValueError, *request_errors()) as e:  # bad flags, or the server refused the warm-up
        print(f"drive: {e}", file=sys.stderr)
        print(json.dumps({"ok": False, "error": str(e)}))
        sys.exit(1)

    print(load_table(result))
    for name, s in result["phases"].items():
        for message in s.get("error_samples", []):
            print(f"error ({name}): {message}")
    print(f"wall {result['wall_s']:.2f} s, {result['total']['throughput_rps']:.1f} req/s, "
          f"{'OK' if result['ok'] else 'FAILED: errors or profile mismatches'}")
    result["regime"] = a.regime
    print(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
