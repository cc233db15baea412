"""The batch-1 MLP kernels (llmprofiles.generation.mlp) against the PyTorch MLP they replace.

On the CPU machine they run in Triton's interpreter (conftest.py sets ``TRITON_INTERPRET=1``), where Triton
is installed, at every block size the autotuner may choose. On a GPU they are compiled, and autotuned at
gemma-3-1b's MLP shape only (one compile per block size in ``mlp.CONFIGS``). Without Triton the tests are
skipped, and the step keeps inductor's multiply-and-reduce form.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="Triton is not installed (CPU-only torch): the kernels cannot run")

from llmprofiles.generation import forward, mlp  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def kernels(monkeypatch):
    if not mlp.available(DEVICE):
        pytest.skip(f"the MLP kernels cannot run on {DEVICE} here")
    if mlp.FIXED is None:  # on a GPU: one block size, where the autotuner compiles 20 per shape (but see below)
        monkeypatch.setattr(mlp, "FIXED", (4, 64, 4))


def autotune_at_gemma_shapes(monkeypatch, gemma: bool) -> None:
    """On a GPU, gemma-3-1b's shapes run as served: autotuned."""
    if gemma and DEVICE.type == "cuda":
        monkeypatch.setattr(mlp, "FIXED", None)


def reference(h: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """The unfused MLP, rounding to the weights' dtype after each projection and the activation, as eager does."""
    gate, up = F.linear(h.float(), gate_up.float()).to(h.dtype).chunk(2, dim=-1)
    act = F.gelu(gate.float(), approximate="tanh").to(h.dtype) * up
    return F.linear(act.float(), down.float()).to(h.dtype)


SHAPES = [(64, 128), (96, 200), (33, 70)]  # (hidden, intermediate): block multiples, and neither rows nor columns
if DEVICE.type == "cuda":
    SHAPES.append((1152, 6912))  # gemma-3-1b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("hidden,inter", SHAPES)
def test_the_kernels_give_the_pytorch_mlp(hidden, inter, dtype, monkeypatch):
    if (hidden, inter) == (1152, 6912) and dtype != torch.float16:
        pytest.skip("gemma-3-1b's shape is served in fp16 only (each shape and dtype autotuned is 20 compiles)")
    autotune_at_gemma_shapes(monkeypatch, (hidden, inter) == (1152, 6912))
    g = torch.Generator().manual_seed(hidden + inter)
    h = torch.randn(1, 1, hidden, generator=g).to(DEVICE, dtype)
    gate_up = (torch.randn(2 * inter, hidden, generator=g) * hidden ** -0.5).to(DEVICE, dtype)
    down = (torch.randn(hidden, inter, generator=g) * inter ** -0.5).to(DEVICE, dtype)
    got = mlp.mlp_op(h, gate_up, down)
    want = reference(h, gate_up, down)
    assert got.shape == want.shape == (1, 1, hidden) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # fp16: the reductions' order, one rounding apart
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("n,k", [(48, 64), (37, 70)] + ([(1536, 1152), (1152, 1024)] if DEVICE.type == "cuda" else []))
def test_the_projection_kernel_gives_f_linear(n, k, dtype, monkeypatch):
    """mlp.linear_op, the batch-1 step's q/k/v and output projections (gemma-3-1b's shapes on a GPU, fp16 only)."""
    if n >= 1152 and dtype != torch.float16:
        pytest.skip("gemma-3-1b's shapes are served in fp16 only (each shape and dtype autotuned is 20 compiles)")
    autotune_at_gemma_shapes(monkeypatch, n >= 1152)
    g = torch.Generator().manual_seed(n + k)
    x = torch.randn(1, 1, k, generator=g).to(DEVICE, dtype)
    w = (torch.randn(n, k, generator=g) * k ** -0.5).to(DEVICE, dtype)
    got = mlp.linear_op(x, w)
    want = F.linear(x.float(), w.float()).to(dtype)
    assert got.shape == (1, 1, n) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


@pytest.mark.skipif(DEVICE.type == "cuda", reason="on a GPU each block size is a compile; the interpreter runs them all")
def test_every_block_size_the_autotuner_may_choose_gives_the_same_mlp(monkeypatch):
    g = torch.Generator().manual_seed(7)
    hidden, inter = 40, 72  # neither a multiple of any block size
    h = torch.randn(1, 1, hidden, generator=g).to(DEVICE)
    gate_up, down = torch.randn(2 * inter, hidden, generator=g).to(DEVICE), torch.randn(hidden, inter, generator=g).to(DEVICE)
    want = reference(h, gate_up * 0.1, down * 0.1)
    for config in mlp.CONFIGS:
        monkeypatch.setattr(mlp, "FIXED", config)
        torch.testing.assert_close(mlp.mlp_op(h, gate_up * 0.1, down * 0.1), want, atol=1e-5, rtol=1e-5,
                                   msg=lambda m, c=config: f"block size {c}: {m}")


def test_a_weight_of_another_layout_is_refused_with_its_shape_and_strides():
    w = torch.randn(8, 16, device=DEVICE)
    with pytest.raises(ValueError, match=r"row-major weight \[N, K\].*\(16, 8\) with strides \(1, 16\)"):
        mlp.gemv(torch.randn(8, device=DEVICE), w.t(), gated=False)
    with pytest.raises(ValueError, match="an input of K=16 values; got .* an input of 12"):
        mlp.gemv(torch.randn(12, device=DEVICE), w, gated=False)


@pytest.mark.parametrize("on", [True, False], ids=["kernel", "multiply-and-reduce"])
def test_the_batch_1_mlp_takes_the_kernels_only_when_they_are_on(monkeypatch, on):
    """out_mlp with ``mlp_kernel`` (the batch-1 decode step's) calls the kernels, both of them, once per call;
    without it, or for a step of several tokens, it does not. Same result either way."""
    calls = []
    real = mlp.gemv
    monkeypatch.setattr(mlp, "gemv", lambda x, w, gated: calls.append(gated) or real(x, w, gated))
    g = torch.Generator().manual_seed(0)
    hidden, inter = 32, 48
    weights = [torch.randn(*s, generator=g).to(DEVICE) * 0.2 for s in
               [(hidden, 2 * 16), (hidden,), (hidden,), (2 * inter, hidden), (hidden, inter), (hidden,)]]
    attn = torch.randn(1, 2, 1, 16, generator=g).to(DEVICE)
    residual = torch.randn(1, 1, hidden, generator=g).to(DEVICE)
    got = forward.out_mlp(attn, residual, *weights, 1e-6, gemv=True, mlp_kernel=on, proj_kernel=on)
    assert calls == ([False, True, False] if on else [])  # the output projection, then the MLP's two
    torch.testing.assert_close(got, forward.out_mlp(attn, residual, *weights, 1e-6), atol=1e-5, rtol=1e-5)
    calls.clear()
    forward.out_mlp(attn.expand(1, 2, 3, 16), residual.expand(1, 3, hidden), *weights, 1e-6)
    assert calls == []


@pytest.mark.parametrize("proj", [True, False], ids=["projections", "mlp-only"])
@pytest.mark.parametrize("flag", [None, True, False], ids=["unchecked", "kept", "refused"])
def test_a_batch_1_decode_step_uses_the_kernels_as_its_build_decided(monkeypatch, flag, proj):
    """The engine's mlp_kernel (from the build's check, via the manifest): kept or not checked (MLP_KERNEL, on)
    runs the kernels in every layer of a batch-1 decode step, the MLP's and (PROJ_KERNEL) the q/k/v and output
    projections'; refused runs none. Batch 2 never does."""
    from llmprofiles import models
    from llmprofiles.generation.engine import GenerationEngine
    from llmprofiles.profiles.generation import GenerationSpec

    hf = models.load_model("tiny", torch.float32)
    shape = forward.ModelShape.from_config(hf.config.to_dict())
    spec = GenerationSpec(slots=2, max_context=64, decode_buckets=(1, 2), prefill_buckets=(16,))
    weights = forward.fuse_weights(shape, {k: v.clone().to(DEVICE) for k, v in hf.state_dict().items()})
    e = GenerationEngine(shape, weights, spec, DEVICE, cuda_graphs=False, compile=False, decode_kernel=True,
                         mlp_kernel=flag)
    e.forward.whole_decode = True
    monkeypatch.setattr(forward, "PROJ_KERNEL", proj)
    calls = []
    real, real_linear = mlp.mlp_op, mlp.linear_op
    monkeypatch.setattr(mlp, "mlp_op", lambda *a: calls.append("mlp") or real(*a))
    monkeypatch.setattr(mlp, "linear_op", lambda *a: calls.append("proj") or real_linear(*a))
    e.prefill(0, [4, 5, 6], 0)
    e.decode([0], [7], [3])
    on = flag is not False
    assert calls.count("mlp") == (shape.num_layers if on else 0)
    assert calls.count("proj") == (2 * shape.num_layers if on and proj else 0)
    calls.clear()
    e.decode([0, 1], [7, 8], [4, 0])
    assert calls == []


def test_the_builds_check_keeps_matching_kernels_and_refuses_wrong_or_failing_ones(monkeypatch):
    from llmprofiles import models
    from llmprofiles.generation.engine import check_mlp_kernel

    hf = models.load_model("tiny", torch.float32).to(DEVICE)
    kept = check_mlp_kernel(hf, DEVICE, tokens=1)
    assert kept["use"] == "kernel" and kept["max_rel_diff"] <= 1e-4
    real = mlp.mlp_op
    monkeypatch.setattr(mlp, "mlp_op", lambda h, gu, d: real(h, gu, d) * 1.01)
    wrong = check_mlp_kernel(hf, DEVICE, tokens=1)
    assert wrong["use"] == "pytorch" and "outputs differ by" in wrong["reason"]
    assert 0.009 < wrong["max_rel_diff"] < 0.011
    monkeypatch.setattr(mlp, "mlp_op", real)
    real_linear = mlp.linear_op
    monkeypatch.setattr(mlp, "linear_op", lambda x, w: real_linear(x, w) * 1.02)  # a projection wrong, the MLP right
    wrong = check_mlp_kernel(hf, DEVICE, tokens=1)
    assert wrong["use"] == "pytorch" and 0.019 < wrong["max_rel_diff"] < 0.021
    monkeypatch.setattr(mlp, "linear_op", real_linear)

    def broken(*a):
        raise RuntimeError("no kernel image for this GPU")

    monkeypatch.setattr(mlp, "mlp_op", broken)
    failed = check_mlp_kernel(hf, DEVICE, tokens=1)
    assert failed == {"use": "pytorch", "reason": "the kernels failed: RuntimeError: no kernel image for this GPU"}
    monkeypatch.setattr(mlp, "available", lambda device: False)
    assert check_mlp_kernel(hf, DEVICE)["reason"].startswith("the kernels cannot run on")


def test_pinned_block_sizes_run_instead_of_the_autotuner_and_are_what_chosen_reports(monkeypatch):
    """The server pins the block sizes its build autotuned (manifest -> pin): gemv then launches them for that
    weight shape, never the autotuner, and chosen() (what a build records) reports them."""
    monkeypatch.setattr(mlp, "PINNED", {})
    monkeypatch.setattr(mlp, "FIXED", None)

    class NoAutotuning:
        cache: dict = {}

        def __getitem__(self, grid):
            raise AssertionError("the autotuner ran for a pinned shape")

    monkeypatch.setattr(mlp, "_gemv_tuned", NoAutotuning())
    hidden, inter = 40, 72
    mlp.pin([{"n": inter, "k": hidden, "gated": True, "block_n": 2, "block_k": 32, "warps": 4},
             {"n": hidden, "k": inter, "gated": False, "block_n": 8, "block_k": 16, "warps": 4}])
    assert mlp.chosen() == [{"n": 40, "k": 72, "gated": False, "block_n": 8, "block_k": 16, "warps": 4},
                            {"n": 72, "k": 40, "gated": True, "block_n": 2, "block_k": 32, "warps": 4}]
    g = torch.Generator().manual_seed(3)
    h = torch.randn(1, 1, hidden, generator=g).to(DEVICE)
    gate_up = (torch.randn(2 * inter, hidden, generator=g) * 0.1).to(DEVICE)
    down = (torch.randn(hidden, inter, generator=g) * 0.1).to(DEVICE)
    torch.testing.assert_close(mlp.mlp_op(h, gate_up, down), reference(h, gate_up, down), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("entry,why", [({"n": 8, "k": 8, "gated": True}, "is not"),
                                       ({"n": 8, "k": 8, "gated": True, "block_n": 3, "block_k": 8, "warps": 4},
                                        "power-of-two"),
                                       ({"n": 0, "k": 8, "gated": True, "block_n": 2, "block_k": 8, "warps": 4},
                                        "positive")])
def test_a_malformed_pin_is_refused_naming_the_entry(monkeypatch, entry, why):
    monkeypatch.setattr(mlp, "PINNED", {})
    with pytest.raises(ValueError, match=f"block sizes: .*'n': {entry['n']}.*{why}"):
        mlp.pin([entry])
    assert mlp.PINNED == {}


def test_the_server_serves_the_kernels_as_the_build_decided_and_pins_their_block_sizes(monkeypatch, caplog):
    from llmprofiles.generation.engine import served_mlp_kernel

    monkeypatch.setattr(mlp, "PINNED", {})
    cuda = torch.device("cuda")
    sizes = [{"n": 6912, "k": 1152, "gated": True, "block_n": 8, "block_k": 256, "warps": 4}]
    assert served_mlp_kernel({"mlp_kernel": {"use": "kernel", "block_sizes": sizes}}, cuda) is True
    assert mlp.PINNED == {(6912, 1152, True): (8, 256, 4)}
    assert served_mlp_kernel({"mlp_kernel": {"use": "pytorch", "reason": "x"}}, cuda) is False
    assert served_mlp_kernel({}, cuda) is None  # an older build, not checked: the default
    assert served_mlp_kernel({"mlp_kernel": {"use": "kernel"}}, torch.device("cpu")) is None
    bad = [{"n": 6912, "k": 1152, "gated": True, "block_n": 6, "block_k": 256, "warps": 4}]
    assert served_mlp_kernel({"mlp_kernel": {"use": "kernel", "block_sizes": bad}}, cuda) is True  # autotunes
    assert "the MLP kernels autotune at the warm-up instead" in caplog.text
