"""Drive streamed generation at the Triton ``generate`` model: TTFT, ITL, tokens/s, and which step profiles served it.

Each of ``--concurrency`` threads holds one stream (gRPC) or one keep-alive
connection (HTTP ``/generate_stream`` server-sent events) and sends one request
at a time. Prompts are random token ids (``input_ids``) of ``--prompt-len``
tokens, or ``--text`` (``text_input``). By default every request asks for
``min_tokens = max_tokens``, so the end token cannot stop it early and every
request generates exactly ``--max-tokens`` tokens (``--no-ignore-eos`` turns this
off). Every stream is checked against its request; the script exits non-zero on
any error or mismatch. The last line of stdout is one JSON object.

    python client/generate.py --protocol grpc --concurrency 8 --prompt-len 32:128 --max-tokens 64 --requests 64 \\
        --metrics-url 127.0.0.1:8002
    python client/generate.py --protocol http --url 127.0.0.1:8000 --text "def main():" --duration-s 30
"""

import argparse
import json
import logging
import sys

from llmprofiles.generate_load import MODEL, RequestFailed, generate_table, parse_length_range, run_generate
from llmprofiles.loadgen import DEFAULT_PORTS, PROTOCOLS


def length_range(text: str) -> tuple[int, int]:
    try:
        return parse_length_range(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None,
                   help="host:port of the server (default 127.0.0.1 on port 8001 for grpc, 8000 for http)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc",
                   help="grpc: a tritonclient stream per thread; http: /generate_stream server-sent events")
    p.add_argument("--model", default=MODEL, help="Triton model name")
    p.add_argument("--concurrency", type=int, default=4, help="client threads, each with one request in flight")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt-len", type=length_range, default=(64, 64), metavar="N|LO:HI",
                        help="prompt length in tokens: N fixed, or LO:HI drawn uniformly per request (default 64)")
    prompt.add_argument("--text", default=None, help="send this text_input as every prompt instead of random ids")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens to generate per request")
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="send min_tokens = max_tokens so every request generates exactly --max-tokens "
                        "(on by default, for benchmarking)")
    p.add_argument("--requests", type=int, default=32, help="timed requests in total, over all threads")
    p.add_argument("--duration-s", "--duration", type=float, default=None,
                   help="run for this many seconds instead of --requests")
    p.add_argument("--warmup", type=int, default=1, help="untimed requests per thread before timing")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts and of each request's sampling seed")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 is greedy")
    p.add_argument("--vocab", type=int, default=1000, help="random prompt ids are drawn from [0, vocab)")
    p.add_argument("--metrics-url", default=None,
                   help="host:port of the server's metrics (e.g. 127.0.0.1:8002): report engine steps by profile")
    p.add_argument("--timeout-s", type=float, default=60.0,
                   help="longest wait for any one response before the request counts as an error")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    url = a.url or f"127.0.0.1:{DEFAULT_PORTS[a.protocol]}"
    bound = f"{a.duration_s:g} s" if a.duration_s is not None else f"{a.requests} requests"
    prompt = f"text {a.text!r}" if a.text is not None else f"prompt-len {a.prompt_len[0]}:{a.prompt_len[1]}"
    print(f"generate: {a.model} over {a.protocol} {url}, concurrency {a.concurrency}, {bound}, {prompt}, "
          f"max-tokens {a.max_tokens}{' (ignore-eos)' if a.ignore_eos else ''}, temperature {a.temperature:g}")
    try:
        result = run_generate(url, a.protocol, model=a.model, concurrency=a.concurrency, requests=a.requests,
                              duration_s=a.duration_s, prompt_len=a.prompt_len, text=a.text, max_tokens=a.max_tokens,
                              ignore_eos=a.ignore_eos, temperature=a.temperature, seed=a.seed, vocab=a.vocab,
                              warmup=a.warmup, metrics_url=a.metrics_url, timeout_s=a.timeout_s)
    except (ValueError, RequestFailed, OSError) as e:  # bad flags, a refused warm-up, unreachable metrics
        print(f"generate: {e}", file=sys.stderr)
        print(json.dumps({"ok": False, "error": str(e)}))
        sys.exit(1)

    print(generate_table(result))
    print("OK" if result["ok"] else "FAILED: errors or mismatches")
    print(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
