"""Host work inside Triton's Python backend stub against the same work in a plain Python process.

Through Triton, `llm`'s handler took 1.273 ms for an engine call the benchmark process times at 0.92 ms, and
`llm_single`'s, whose decode the host launches kernel by kernel, 14.2 against 6.4 ms (H200, session 19). This
times host-bound loops (pure Python, tiny torch ops on the CPU, and with a GPU tiny kernel launches, with and
without a synchronize after each) in a model's ``execute`` inside the stub, and the same loops in a plain Python
process beside it, alternating request by request, and prints both. On this project's CPU machine (session 20)
the two were within 10%::

    python -m bench.probes.stub_host [--requests 20] [--port-base 18990]

Ends with one JSON line. Needs the tritonserver of ``make setup`` (or the GPU machine's wheels on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

LOOPS = ("python_loop_ns", "torch_cpu_op_us", "cuda_launch_us", "cuda_launch_sync_us")
MODEL = '''import sys
sys.path.insert(0, {root!r})
import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import to_dlpack
from bench.probes.stub_host import host_work


class TritonPythonModel:
    def initialize(self, args):
        self.device = "cuda:0" if args["model_instance_kind"] == "GPU" else "cpu"

    def execute(self, requests):
        # Through DLPack, as the llm models send theirs: on the GPU machine the stub was built against numpy 1 and
        # the serving Python has numpy 2, and a numpy output came back empty there (session 21).
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor.from_dlpack(
            "times", to_dlpack(torch.tensor(host_work(self.device), dtype=torch.float64)))]) for _ in requests]
'''
CONFIG = '''backend: "python"
max_batch_size: 0
input [{{ name: "x", data_type: TYPE_INT32, dims: [1] }}]
output [{{ name: "times", data_type: TYPE_FP64, dims: [4] }}]
instance_group [{{ kind: {kind}, count: 1 }}]
'''


def host_work(device: str) -> list[float]:
    """Per-iteration times of host-bound loops: ns per Python iteration, us per CPU op, us per CUDA launch, and us
    per launch followed by a synchronize (a request's one wait for the GPU: the device's sync mode shows here)."""
    t0 = time.perf_counter()
    total = 0
    for i in range(200_000):
        total += i & 7
    py_ns = (time.perf_counter() - t0) / 200_000 * 1e9
    a = torch.ones(4)
    t0 = time.perf_counter()
    for _ in range(2000):
        a = a.add(1.0)
    op_us = (time.perf_counter() - t0) / 2000 * 1e6
    launch_us = sync_us = float("nan")
    if device.startswith("cuda"):
        b = torch.ones(4, device=device)
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(2000):
            b = b.add(1.0)
        torch.cuda.synchronize(device)
        launch_us = (time.perf_counter() - t0) / 2000 * 1e6
        t0 = time.perf_counter()
        for _ in range(200):
            b = b.add(1.0)
            torch.cuda.synchronize(device)
        sync_us = (time.perf_counter() - t0) / 200 * 1e6
    return [py_ns, op_us, launch_us, sync_us]


def serve_work(device: str) -> None:
    """One ``host_work`` per line read from stdin, its result as one JSON line."""
    for _ in sys.stdin:
        print(json.dumps(host_work(device)), flush=True)


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        return serve_work(sys.argv[2])
    import tritonclient.grpc as grpc

    from llmprofiles.serving.launcher import TritonServer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--port-base", type=int, default=18990)
    a = p.parse_args()
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    root = str(Path(__file__).resolve().parents[2])
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "repo" / "hostprobe"
        (model / "1").mkdir(parents=True)
        (model / "1" / "model.py").write_text(MODEL.format(root=root))
        (model / "config.pbtxt").write_text(CONFIG.format(kind="KIND_GPU" if device != "cpu" else "KIND_CPU"))
        with TritonServer(Path(tmp) / "repo", a.port_base, a.port_base + 1, a.port_base + 2, work=Path(tmp) / "work"):
            client = grpc.InferenceServerClient(f"127.0.0.1:{a.port_base + 1}")
            x = grpc.InferInput("x", [1], "INT32")
            x.set_data_from_numpy(np.zeros(1, dtype=np.int32))
            # The plain side runs in a process of its own, as the stub does: this one holds the gRPC client's
            # threads (measured here, beside them, the loops once took 2.3x the stub's, on a busy CPU machine).
            worker = subprocess.Popen([sys.executable, "-m", "bench.probes.stub_host", "--worker", device], cwd=root,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            stub, here = [], []
            for _ in range(a.requests):  # alternated, so the host's load hits both alike
                stub.append(client.infer("hostprobe", [x]).as_numpy("times").tolist())
                worker.stdin.write("\n")
                worker.stdin.flush()
                here.append(json.loads(worker.stdout.readline()))
            worker.stdin.close()
            worker.wait()
    out = {"device": device, "requests": a.requests, "torch": torch.__version__}
    for i, name in enumerate(LOOPS):
        s, h = float(np.median([r[i] for r in stub[1:]])), float(np.median([r[i] for r in here[1:]]))
        out[name] = {"stub": s, "plain": h, "stub_vs_plain": s / h if h == h and h else None}
        print(f"{name:18s} stub {s:9.3f}  plain {h:9.3f}  ratio {s / h if h == h and h else float('nan'):.2f}x")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
