"""Triton Python-backend model (decoupled): text generation with continuous batching.

Thin by design: request checks (``llmprofiles.serving.generate``), the scheduler
and the KV-cache engine (``llmprofiles.generation``) are tested without Triton.
This file adapts Triton's tensors, response senders, errors and metrics.

``execute`` only checks and queues a request. One scheduler thread runs every
engine step and, by default, sends the streamed responses; with ``send_threads`` > 0
a few sender threads send them instead, each request's from one thread, coalesced
when they pile up (``llmprofiles.serving.pump``). Final responses go from their own
thread, after the metrics that count them (``llmprofiles.serving.generate.Finals``).
"""

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from llmprofiles.generation.engine import load_generation_engine
from llmprofiles.generation.scheduler import GenerateRequest, QueueFull, Scheduler
from llmprofiles.generation.tokenizer import Tokenizer
from llmprofiles.serving.generate import (INPUT_NAMES, Finals, Limits, MetricsObserver, check_shapes, parse_request,
                                          response_arrays, stop_in_turn)
from llmprofiles.serving.llm import BadRequest
from llmprofiles.serving.pump import ResponsePump, StreamInterval


SWITCH_INTERVAL_S = 0.0005


class TritonPythonModel:
    def initialize(self, args):
        if int(np.__version__.split(".")[0]) >= 2:  # refuse to load rather than answer with empty text
            raise RuntimeError(
                f"numpy {np.__version__} in the server's Python (from {Path(np.__file__).parent}; "
                f"sys.path starts {sys.path[:4]}): the 24.10 Python backend sends BYTES outputs "
                "(text_output, finish_reason) empty under numpy 2. Install numpy<2 for the server (`make setup` "
                "does), or start the server with STUB_PYTHON naming a Python whose numpy is < 2 (the stub "
                "ignores PYTHONPATH; llmprofiles.serving.launcher.overlay_python makes one)")
        # A thread that wants the GIL back (the scheduler after a GPU wait, a sender after its round trip) waits up
        # to the switch interval while another runs Python: 5 ms by default, which cut responses/s about 3x in
        # bench/probes/response_rate.py. This stub serves only this model.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        config = json.loads(args["model_config"])
        # pb_utils' error codes exist only once the stub serves (not at import, during auto-complete).
        self.error_codes = {"invalid": pb_utils.TritonError.INVALID_ARG,
                            "unavailable": pb_utils.TritonError.UNAVAILABLE, "internal": pb_utils.TritonError.INTERNAL}
        device = f"cuda:{args['model_instance_device_id']}" if args["model_instance_kind"] == "GPU" else "cpu"
        version_dir = Path(args["model_repository"]) / args["model_version"]
        t0 = time.perf_counter()
        self.engine = load_generation_engine(version_dir, device)  # EngineLoadError fails the load: `make build`
        loaded_s = time.perf_counter() - t0
        self.tokenizer = Tokenizer(version_dir)
        self.limits = Limits(self.engine.vocab_size, self.engine.spec.max_context)
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        max_queue, cancel_check_ms = int(params["max_queue"]), float(params.get("cancel_check_ms", "0"))
        self.observer = MetricsObserver(pb_utils, config["name"], self.engine.profiles.names)
        self.finals = Finals(self.observer, self._respond)  # metrics, then final responses, off the scheduler thread
        send_threads = int(params.get("send_threads", "0"))  # 0: the scheduler thread sends
        self.pump = ResponsePump(self._send, threads=send_threads) if send_threads else None
        emit = self.pump.put if self.pump else self._send
        interval = int(params.get("stream_interval", "1"))  # tokens per response after the first
        if interval > 1:
            emit = StreamInterval(emit, interval).put
        send_budget_ms = float(params.get("send_budget_ms", "0"))  # per step, for streamed tokens; 0: no limit
        decode_steps = int(params.get("decode_steps", "1"))  # decode steps launched per scheduler iteration
        graph_greedy = params.get("graph_greedy", "1") == "1"  # greedy rows' tokens chosen inside the step
        self.scheduler = Scheduler(self.engine, self.tokenizer, emit, max_queue, self.observer,
                                   cancel_check_s=cancel_check_ms / 1e3, send_budget_s=send_budget_ms / 1e3,
                                   decode_steps=decode_steps, graph_greedy=graph_greedy)
        self.scheduler.start()
        warm = self._warm_up()
        warm_s = dict(zip(self.engine.profiles.names, (round(t, 1) for t in warm)))
        pb_utils.Logger.log_info(f"{config['name']}: {self.engine.spec.slots} slots x {self.engine.spec.max_context} "
                                 f"on {device}, stream_interval {interval}, send_threads {send_threads}, send_budget_ms "
                                 f"{send_budget_ms:g}, cancel_check_ms {cancel_check_ms:g}, decode_steps {decode_steps}, "
                                 f"graph_greedy {int(graph_greedy)}; engine loaded in {loaded_s:.1f} s, then warm-up s "
                                 f"per step profile (start-up's parts) {warm_s}; compile s by stage "
                                 f"{self.engine.compile_s}")

    def _warm_up(self):
        """Ready means warm: every step profile runs once, then requests go the whole way on the scheduler thread.
        Seconds per profile."""
        times = self.engine.warm_up()
        spec = self.engine.spec
        for length in (1, *spec.prefill_buckets, spec.max_chunk + 1):
            if length + 2 > spec.max_context:
                continue
            done = threading.Event()
            self.scheduler.submit(GenerateRequest([3] * length, max_tokens=2, stream=True, sink=done))
            if not done.wait(600):
                raise RuntimeError(f"warm-up request of {length} tokens did not finish")
        return times

    def _send(self, out):  # the scheduler thread, or a sender thread of the pump
        sink = out.request.sink
        if isinstance(sink, threading.Event):  # a warm-up request
            if out.final:
                sink.set()
            return
        if out.final:  # sent after the metrics that count it, from the finals thread
            self.finals.put(out)
            return
        self._respond(out)

    def _respond(self, out):
        sender, flags = out.request.sink
        if out.error is not None:
            response = pb_utils.InferenceResponse(error=pb_utils.TritonError(out.error, self.error_codes[out.error_kind]))
        else:
            # Numbers through DLPack (any numpy); BYTES need numpy < 2 in this stub (see README).
            tensors = [pb_utils.Tensor.from_dlpack(name, torch.from_numpy(array)) if array.dtype == np.int64
                       else pb_utils.Tensor(name, array) for name, array in response_arrays(out, flags).items()]
            response = pb_utils.InferenceResponse(output_tensors=tensors)
        try:
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if out.final else 0)
        except Exception as e:  # the client is gone; its slot is already free or freed at the next step
            pb_utils.Logger.log_warn(f"generate: could not send a response: {e}")

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                tensors = {name: t for name in INPUT_NAMES
                           if (t := pb_utils.get_input_tensor_by_name(request, name)) is not None}
                check_shapes({name: t.shape() for name, t in tensors.items()}, self.limits)
                gen, flags = parse_request({name: t.as_numpy() for name, t in tensors.items()},
                                           self.tokenizer, self.limits)
                gen.sink, gen.is_cancelled = (sender, flags), sender.is_cancelled
                self.scheduler.submit(gen)
            except BadRequest as e:
                self.scheduler.reject(GenerateRequest([], sink=(sender, {})), str(e), "invalid")
            except QueueFull as e:
                self.scheduler.reject(GenerateRequest([], sink=(sender, {})), str(e), "unavailable")
        return None

    def finalize(self):
        def say(line):  # straight to the server's stderr: a stage that hangs may hold the stub's messages too
            print(f"generate: {line}", file=sys.stderr, flush=True)

        say(stop_in_turn([("scheduler", self.scheduler.stop), ("send threads", self.pump.stop if self.pump else None),
                          ("finals", self.finals.stop), ("metrics", self.observer.close)], say=say))
