"""Triton Python-backend model: serves a multi-profile engine by ordered first-fit.

Thin by design: the engine, profile selection and request checks live in the
``llmprofiles`` package (tested without Triton); this file only adapts Triton's
tensors, parameters, errors and metrics.
"""

import json
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack

from llmprofiles.profiles.selection import PARAMETER
from llmprofiles.runtimes.load import load_engine
from llmprofiles.serving.llm import (
    INPUTS,
    LATENCY_BUCKETS_MS,
    BadRequest,
    RequestHandler,
    cut_message,
    max_positions_of,
    warm_requests,
)


def _inputs(request):
    return _loaders({name: pb_utils.get_input_tensor_by_name(request, name) for name in INPUTS})


def _loaders(tensors):
    """Each input's declared shape (metadata only) and a loader that builds its torch tensor on demand."""
    shapes = {name: None if t is None else tuple(t.shape()) for name, t in tensors.items()}
    # DLPack, not as_numpy(): works with numpy 2 and with GPU tensors.
    return shapes, lambda name: None if tensors[name] is None else from_dlpack(tensors[name].to_dlpack())


def _outputs(served):
    return [pb_utils.Tensor.from_dlpack("logits", to_dlpack(served.logits.contiguous())),
            pb_utils.Tensor.from_dlpack("profile_index", to_dlpack(torch.tensor([served.profile_index], dtype=torch.int32)))]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        device = f"cuda:{args['model_instance_device_id']}" if args["model_instance_kind"] == "GPU" else "cpu"
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.engine = load_engine(version_dir, device)  # EngineLoadError fails the load, telling to `make build`
        names = self.engine.profiles.names
        model = config["name"]
        # Families must outlive their metrics, so they are kept on self.
        self.families = requests, latency, errors = (
            pb_utils.MetricFamily("llm_profile_requests_total", "Requests served, by optimization profile",
                                  pb_utils.MetricFamily.COUNTER),
            pb_utils.MetricFamily("llm_profile_latency_ms", "Validate + engine latency (ms), by optimization profile",
                                  pb_utils.MetricFamily.HISTOGRAM),
            pb_utils.MetricFamily("llm_profile_invalid_requests_total", "Requests refused with INVALID_ARG",
                                  pb_utils.MetricFamily.COUNTER),
        )
        self.requests = [requests.Metric(labels={"model": model, "profile": n}) for n in names]
        self.latency = [latency.Metric(labels={"model": model, "profile": n}, buckets=list(LATENCY_BUCKETS_MS))
                        for n in names]
        self.invalid = errors.Metric(labels={"model": model})
        self.handler = RequestHandler(self.engine, on_served=self._record, max_positions=max_positions_of(version_dir))
        # Ready means warm: each profile once more through execute's own path (backend tensors in, DLPack,
        # checks, engine, output tensors), uncounted by the metrics.
        warm = RequestHandler(self.engine, max_positions=max_positions_of(version_dir))
        for index, ids, pos in warm_requests(self.engine):
            tensors = {"input_ids": pb_utils.Tensor.from_dlpack("input_ids", to_dlpack(ids)),
                       "position_ids": pb_utils.Tensor.from_dlpack("position_ids", to_dlpack(pos))}
            served = warm.serve(*_loaders(tensors), json.dumps({PARAMETER: index}))
            _outputs(served)
        pb_utils.Logger.log_info(f"{model}: profiles {list(names)} on {device}")

    def _record(self, index, latency_ms):
        self.requests[index].increment(1)
        self.latency[index].observe(latency_ms)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                served = self.handler.serve(*_inputs(request), request.parameters())
                responses.append(pb_utils.InferenceResponse(output_tensors=_outputs(served)))
            except BadRequest as e:
                self.invalid.increment(1)
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(cut_message(str(e)), pb_utils.TritonError.INVALID_ARG)))
            except Exception as e:  # an engine fault fails this request only; the server keeps serving
                pb_utils.Logger.log_error(cut_message(f"engine error: {e!r}"))
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(cut_message(f"internal engine error: {e}"), pb_utils.TritonError.INTERNAL)))
        return responses
