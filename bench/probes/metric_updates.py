"""What the llm model's two metric updates cost per request, in a real tritonserver (CPU is enough).

1. In the stub: a copy of the built ``llm`` model whose ``initialize`` times
   2,000 calls of each update (after 200 warm-ups) and logs the result.
2. End to end: three copies of the benchmark's no-op model in one server (plain;
   both updates before returning; response sent first, then both updates),
   called interleaved over gRPC.

    .venv/bin/python bench/probes/metric_updates.py   # after `make build`
"""

import shutil
import tempfile
from pathlib import Path

import numpy as np

from bench.llm_bench import call_order, noop_repo
from llmprofiles.loadgen import Caller, percentiles
from llmprofiles.serving.launcher import TritonServer

WORK = Path(tempfile.mkdtemp(prefix="metric_updates_"))

TIMED = '''
        import time
        for what, fn in (("record", lambda: self._record(0, 1.0)), ("increment", lambda: self.requests[0].increment(1)),
                         ("observe", lambda: self.latency[0].observe(1.0))):
            for _ in range(200):
                fn()
            t0 = time.perf_counter()
            for _ in range(2000):
                fn()
            pb_utils.Logger.log_info(f"PROBE {what}: {(time.perf_counter() - t0) / 2000 * 1e6:.1f} us per call")'''

METRICS = '''
        family = (pb_utils.MetricFamily("probe_requests_total", "r", pb_utils.MetricFamily.COUNTER),
                  pb_utils.MetricFamily("probe_latency_ms", "l", pb_utils.MetricFamily.HISTOGRAM))
        self.families = family
        self.req = family[0].Metric(labels={"profile": "decode"})
        self.lat = family[1].Metric(labels={"profile": "decode"}, buckets=[0.5, 1, 2, 5, 10, 20, 50, 100])
'''


def in_stub() -> None:
    repo = WORK / "stub_repo"
    shutil.copytree("model_repository/llm", repo / "llm", symlinks=False)
    model = repo / "llm" / "1" / "model.py"
    marker = '        pb_utils.Logger.log_info(f"{model}: profiles {list(names)} on {device}")'
    model.write_text(model.read_text().replace(marker, marker + TIMED))
    log = WORK / "stub.log"
    with TritonServer(repo, 18800, 18801, 18802, work=WORK / "w1", log_path=log):
        pass
    print("".join(line for line in log.read_text().splitlines(keepends=True) if "PROBE" in line))


def end_to_end(iters: int = 3000) -> None:
    base = noop_repo({"dtype": "float32", "vocab_size": 32000}, "KIND_CPU") / "noop"
    repo = WORK / "e2e_repo"
    for name in ("noop", "before", "after"):
        shutil.copytree(base, repo / name)
        model = repo / name / "1" / "model.py"
        src = model.read_text()
        if name != "noop":
            src = src.replace("dtype=torch.int32)\n", "dtype=torch.int32)\n" + METRICS, 1)
        if name == "before":
            src = src.replace("    def execute(self, requests):\n", "    def execute(self, requests):\n"
                              "        for _ in requests:\n            self.req.increment(1)\n            self.lat.observe(1.0)\n")
        if name == "after":
            src = src.replace("    def execute(self, requests):\n        return [", "    def execute(self, requests):\n        out = [")
            src = src.rstrip() + ("\n        for request, response in zip(requests, out):\n"
                                  "            request.get_response_sender().send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)\n"
                                  "            self.req.increment(1)\n            self.lat.observe(1.0)\n        return None\n")
        model.write_text(src)
    with TritonServer(repo, 18900, 18901, 18902, work=WORK / "w2", log_path=WORK / "e2e.log") as server:
        caller = Caller("grpc", server.grpc_url)
        ids, pos = np.array([[5]], dtype=np.int64), np.array([[0]], dtype=np.int64)
        names = ["noop", "before", "after"]
        samples = {n: [] for n in names}
        for _ in range(100):
            for n in names:
                caller(n, ids, pos)
        for it in range(iters):
            for n in call_order(names, it):
                samples[n].append(caller(n, ids, pos).latency_ms)
        caller.close()
    for n, v in samples.items():
        print(f"{n:7s} p50/p90/p99 ms: " + " / ".join(f"{x:.3f}" for x in percentiles(v, (50, 90, 99))))


if __name__ == "__main__":
    in_stub()
    end_to_end()
