"""Check the TensorRT runtime against real TensorRT, on a GPU.

Builds the tiny preset with both profiles (decode, prefill) into a temporary
model folder with RUNTIME=tensorrt, loads it as the Triton model would, and
checks what the CPU contract tests cannot: the profile table read back from a
real engine, first-fit choices and the profile TensorRT actually has active,
rejection of a too-long request, and logits against eager PyTorch.

Prints PASS or FAIL per check and ends with one JSON line; exits 1 on any
FAIL, 2 when TensorRT, Torch-TensorRT or a GPU is missing.

Run::

    python -m llmprofiles.runtimes.check_tensorrt      # or: make check-tensorrt
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from llmprofiles import models
from llmprofiles.build import build
from llmprofiles.profiles.selection import SelectionError
from llmprofiles.profiles.sets import MULTI
from llmprofiles.runtimes.load import load_engine
from llmprofiles.runtimes.tensorrt import (TensorRTUnavailable, import_tensorrt, import_torch_tensorrt,
                                           profile_mismatches, read_profile_table)

# fp16 tolerance, elementwise: |trt - eager| <= ATOL + RTOL * |eager|. Both sides
# round to fp16; on CPU, fp16 eager differs from fp32 eager by up to 0.011 at
# seq 512 for the tiny preset (|logits| <= ~1.6), and TensorRT may pick other
# kernels and fusions than eager, so allow about three times that.
ATOL, RTOL = 3e-2, 3e-2
# seq -> profile index expected under ordered first-fit (decode first wins seq 1).
EXPECTED = {1: 0, 2: 1, 256: 1, 512: 1}
REJECTED_SEQ = 513


def missing_requirement() -> str | None:
    try:
        import_tensorrt()
        import_torch_tensorrt()
    except TensorRTUnavailable as e:
        return str(e)
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch; TensorRT engines build and run on a GPU"
    return None


class Report:
    def __init__(self):
        self.results: dict[str, bool] = {}

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.results[name] = bool(ok)
        print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f": {detail}" if detail else ""), flush=True)


def request(seq: int, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seq)
    ids = torch.randint(0, vocab, (1, seq), generator=g).to(device)
    return ids, models.default_position_ids(ids).contiguous()


def run_checks(model: str, model_dir: Path, report: Report) -> None:
    device = torch.device("cuda")
    try:
        build(model, "multi", "tensorrt", "cuda", "float16", model_dir, force=True)
        engine = load_engine(model_dir / "1", device)
    except Exception as e:  # the first contact with real TensorRT: report it like any other check
        report.check("build and load the TensorRT engine", False, f"{type(e).__name__}: {e}")
        return
    report.check("build and load the TensorRT engine", True, f"{model_dir}")

    table = read_profile_table(engine.trt, engine.cuda_engine, MULTI.names)
    problems = profile_mismatches(table, MULTI)
    report.check("profile table read back from the engine matches the profile set", not problems,
                 "; ".join(problems) or "; ".join(table.describe(i) for i in range(len(table))))

    chosen = {seq: engine.select({"input_ids": (1, seq), "position_ids": (1, seq)}) for seq in EXPECTED}
    report.check("ordered first-fit choices for seq 1, 2, 256, 512 are 0, 1, 1, 1", chosen == EXPECTED, f"{chosen}")

    too_long = {"input_ids": (1, REJECTED_SEQ), "position_ids": (1, REJECTED_SEQ)}
    try:
        engine.select(too_long)
        report.check(f"seq {REJECTED_SEQ} is rejected by selection", False, "a profile was chosen")
    except SelectionError as e:
        report.check(f"seq {REJECTED_SEQ} is rejected by selection", True, str(e))
    try:
        engine.run(1, *request(REJECTED_SEQ, engine.vocab_size, device))
        report.check(f"seq {REJECTED_SEQ} forced onto prefill is rejected before TensorRT", False, "it ran")
    except SelectionError as e:
        report.check(f"seq {REJECTED_SEQ} forced onto prefill is rejected before TensorRT", True, str(e))

    eager = models.LastTokenLM(models.load_model(model, torch.float16, device))
    vocab = engine.vocab_size
    # The last seq 1 follows prefills: decode must be pinned again (first-fit is not sticky).
    for label, seq in [*((f"seq {s}", s) for s in EXPECTED), ("seq 1 after prefill", 1)]:
        index = engine.select({"input_ids": (1, seq), "position_ids": (1, seq)})
        ids, pos = request(seq, vocab, device)
        with torch.no_grad():
            got = engine.run(index, ids, pos).float()
            want = eager(ids, pos).float()
        torch.cuda.synchronize()
        active = engine.context.active_optimization_profile  # TensorRT 10/11, read from TensorRT itself
        report.check(f"{label}: TensorRT's active profile is the chosen one", active == index,
                     f"chosen {index}, TensorRT active {active}")
        err = (got - want).abs()
        ok = got.shape == want.shape and bool((err <= ATOL + RTOL * want.abs()).all())
        report.check(f"{label}: logits match eager fp16 within atol {ATOL}, rtol {RTOL}", ok,
                     f"max |diff| {err.max().item():.4f}, max |eager| {want.abs().max().item():.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", choices=sorted(models.PRESETS), help="preset to build (random weights)")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="build into this model folder and keep it (default: a temporary folder)")
    a = p.parse_args(argv)
    reason = missing_requirement()
    if reason:
        print(f"check-tensorrt: cannot run here: {reason}", file=sys.stderr)
        print(json.dumps({"check": "tensorrt", "ran": False, "reason": reason}))
        return 2
    report = Report()
    with tempfile.TemporaryDirectory(prefix="check-tensorrt-") as tmp:
        run_checks(a.model, a.model_dir or Path(tmp) / "llm", report)
    failed = [name for name, ok in report.results.items() if not ok]
    trt, tt = import_tensorrt(), import_torch_tensorrt()
    print(f"check-tensorrt: {len(report.results) - len(failed)} passed, {len(failed)} failed")
    print(json.dumps({"check": "tensorrt", "ran": True, "passed": len(report.results) - len(failed),
                      "failed": failed, "tensorrt": trt.__version__, "torch_tensorrt": tt.__version__,
                      "gpu": torch.cuda.get_device_name()}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
