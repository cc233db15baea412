"""A no-op Python model: the same inputs and outputs as ``llm`` and no engine.

The benchmark serves it beside ``llm`` to measure what Triton's Python backend
and the client round trip cost by themselves. It returns a preallocated logits
tensor of the engine's shape, dtype and device, so the transfer cost matches.
"""

import json

import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import to_dlpack


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        device = f"cuda:{args['model_instance_device_id']}" if args["model_instance_kind"] == "GPU" else "cpu"
        self.logits = torch.zeros(1, int(params["vocab"]), dtype=getattr(torch, params["dtype"]), device=device)
        self.index = torch.zeros(1, dtype=torch.int32)

    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor.from_dlpack("logits", to_dlpack(self.logits.clone())),
            pb_utils.Tensor.from_dlpack("profile_index", to_dlpack(self.index)),
        ]) for _ in requests]
