"""The main job: serve the built model repository, drive decode and prefill, compare, generate, stop.

Starts the real tritonserver on 127.0.0.1, sends decode traffic over gRPC and
prefill traffic over HTTP to the multi-profile model ``llm``, then measures the
seed's comparison table (single-profile ``llm_single`` vs ``llm``) in one run
and prints which profile served what. Then it streams a few completions from
the ``generate`` model token by token, runs a short concurrent generation load
(``client/generate.py``'s logic) with the engine steps by profile, and stops the
server. Exits non-zero on any error, profile mismatch or broken stream. Run
through ``make demo`` (which builds first).
"""

import argparse
import json
import sys

from llmprofiles.generate_load import GenRequest, RequestFailed, generate_table, open_session, run_generate, send
from llmprofiles.loadgen import Phase, compare_tables, fmt_ms, load_table, run_compare, run_load
from llmprofiles.serving.launcher import TritonServer

PROMPTS = ("def main():", "The capital of France is", "import numpy as np\n")


def stream_completions(url: str, max_tokens: int) -> list[dict]:
    """Stream each prompt over gRPC, printing the text as it arrives; one checked record per prompt."""
    session = open_session("grpc", url)
    records = []
    try:
        for i, prompt in enumerate(PROMPTS):
            print(f"> {prompt!r} -> ", end="", flush=True)
            record = send(session, GenRequest(i, None, prompt, max_tokens),
                          on_chunk=lambda chunk: print(chunk.text, end="", flush=True))
            problem = record.error or record.mismatch
            print(f"\n  [{record.output_tokens} tokens, finish_reason {record.finish_reason!r}, "
                  f"TTFT {fmt_ms(record.ttft_ms)} ms, end-to-end {fmt_ms(record.e2e_ms)} ms"
                  f"{f'; FAILED: {problem}' if problem else ''}]")
            records.append({"prompt": prompt, "tokens": record.output_tokens, "finish_reason": record.finish_reason,
                            "ttft_ms": record.ttft_ms, "ok": problem is None})
    finally:
        session.close()
    return records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port on 127.0.0.1")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port on 127.0.0.1")
    p.add_argument("--metrics-port", type=int, default=8002, help="metrics port on 127.0.0.1")
    p.add_argument("--requests", type=int, default=100, help="timed calls per regime (and per model in the comparison)")
    p.add_argument("--prefill-seq", type=int, default=128, help="prefill length")
    p.add_argument("--gen-max-tokens", type=int, default=32, help="tokens per generate request")
    p.add_argument("--gen-concurrency", type=int, default=4, help="client streams in the generation load")
    p.add_argument("--gen-requests", type=int, default=16, help="requests in the generation load")
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

        print(f"Streamed generation on generate over gRPC (text_input, up to {a.gen_max_tokens} tokens, greedy)")
        streams = stream_completions(server.grpc_url, a.gen_max_tokens)
        print(f"\nGeneration load on generate over gRPC ({a.gen_concurrency} clients, {a.gen_requests} requests, "
              f"prompt-len 16:96, max-tokens {a.gen_max_tokens}, ignore-eos)")
        try:
            generation = run_generate(server.grpc_url, "grpc", concurrency=a.gen_concurrency, requests=a.gen_requests,
                                      prompt_len=(16, 96), max_tokens=a.gen_max_tokens,
                                      metrics_url=f"127.0.0.1:{server.metrics_port}")
            print(generate_table(generation) + "\n")
        except RequestFailed as e:
            print(f"generation load FAILED: {e}\n")
            generation = {"ok": False, "error": str(e)}
    ok = (compare["ok"] and all(r["ok"] for r in results.values()) and all(s["ok"] for s in streams)
          and generation["ok"])
    print("demo OK: every request served by its expected profile, every stream complete" if ok
          else "demo FAILED: errors, profile mismatches or broken streams")
    print(json.dumps({"ok": ok, "traffic": {k: r["phases"] for k, r in results.items()},
                      "compare": compare["rows"], "streams": streams,
                      "generation": {k: v for k, v in generation.items() if k not in ("url", "text")}}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
