"""The AOTInductor runtime (CPU): one package per profile, one copy of the weights.

Each profile is compiled ahead of time from the union export re-traced over that
profile's range with its opt as the size hint. Packages hold code only; the
weights are loaded once and handed to every package as user-managed constants.
(AOTInductor CUDA packages segfault at load on the H200 machine with torch 2.11;
use the torch-compile runtime there.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from llmprofiles.engine import Engine
from llmprofiles.export import export
from llmprofiles.manifest import EngineLoadError, profiles_of
from llmprofiles.profiles.spec import ProfileSet
from llmprofiles.runtimes.weights import load_weights


def package_name(index: int, name: str) -> str:
    return f"profile_{index}_{name}.pt2"


def build_aoti(ctx, step) -> tuple[list[str], dict]:
    vocab = ctx.wrapper.model.config.vocab_size
    union = ctx.exported.module()
    artifacts = []
    for i, name in enumerate(ctx.profiles.names):
        r = ctx.profiles.ranges(i)["input_ids"]
        with step(f"profile {i} '{name}': AOTInductor package, {r.describe()}, tuned at {list(r.opt)}"):
            ep = export(union, ctx.profiles.ranges(i), vocab, ctx.device)
            path = ctx.version_dir / package_name(i, name)
            torch._inductor.aoti_compile_and_package(
                ep, package_path=str(path),
                # Code only: every package gets the one shared copy of the weights at load.
                inductor_configs={"aot_inductor.package_constants_in_so": False},
            )
            artifacts.append(path.name)
    return artifacts, {}


class AOTIEngine(Engine):
    def __init__(self, profiles: ProfileSet, vocab_size: int, device: torch.device, runners: list[Callable]):
        super().__init__(profiles, vocab_size, device)
        self.runners = runners

    def _forward(self, profile_index, input_ids, position_ids):
        return self.runners[profile_index](input_ids, position_ids)


def load_aoti(version_dir: Path, manifest: dict[str, Any], device: torch.device) -> AOTIEngine:
    if device.type != "cpu":
        raise EngineLoadError(f"the aoti engine in {version_dir} is CPU-only; rebuild with RUNTIME=torch-compile for {device}")
    profiles = profiles_of(manifest)
    weights = load_weights(version_dir, manifest, device)
    runners = []
    for i, name in enumerate(profiles.names):
        runner = torch._inductor.aoti_load_package(str(version_dir / package_name(i, name)))
        fqns = runner.get_constant_fqns()
        missing = [k for k in fqns if k not in weights]
        if missing:
            raise EngineLoadError(f"weights.safetensors in {version_dir} lacks {missing[:3]}; run `make build`")
        # user_managed: the package uses these tensors in place, so all profiles share them.
        runner.load_constants({k: weights[k] for k in fqns}, check_full_update=True, user_managed=True)
        runners.append(runner)
    return AOTIEngine(profiles, manifest["vocab_size"], device, runners)
