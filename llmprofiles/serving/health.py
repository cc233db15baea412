"""Honest health: one tiny real inference per model, over HTTP, with the standard library only.

Triton 2.51 answers ``/v2/health/ready`` and ``/v2/models/<m>/ready`` with 200
even after a model's backend stub has died, while every inference fails with
"Stub process ... is not healthy". Only a real request tells the truth, so the
probe sends one per model:

- ``llm``-like models (input ``input_ids``, output ``logits``): ``input_ids``
  ``[[0]]`` (seq 1, the decode profile); the answer must carry ``logits`` of
  shape ``[1, vocab]`` and a ``profile_index``.
- ``generate``-like models (decoupled, inputs ``input_ids`` and ``max_tokens``):
  ``POST /v2/models/<m>/generate`` with ``{"input_ids": [1], "max_tokens": 1}``;
  the answer must carry exactly one token in ``output_ids``. Such a model
  queues requests while every sequence slot is busy, so a probe with no answer in
  time is followed by a request it must refuse at once (``max_tokens`` 0): refused
  means busy (not ready, but alive: no restart), no answer either means hung.
- any other model: its ``/v2/models/<m>/ready`` (no request format is known).

The model list comes from the server's repository index
(``POST /v2/repository/index``) unless given. ``client/health.py`` is the
command; the supervisor (``llmprofiles.serving.supervisor``) calls
:func:`probe` in-process.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

# Answers that only a restart fixes: the model's backend stub is gone.
DEAD_STUB_MARKERS = ("is not healthy", "Stub process", "stub process")


@dataclass(frozen=True)
class ModelHealth:
    model: str
    ok: bool
    reason: str = ""  # one line; empty when ok
    dead: bool = False  # True when only a restart can fix it (a dead stub, a hung model, no server)
    ms: float = 0.0


class ProbeError(Exception):
    def __init__(self, reason: str, dead: bool = False):
        super().__init__(reason)
        self.dead = dead


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def http(url: str, path: str, body: dict | None = None, timeout_s: float = 5.0, post: bool = False) -> dict | list:
    """JSON from ``http://{url}{path}``; raise ProbeError with a one-line reason on anything else."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{url}{path}", data=data, method="POST" if post or data else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            text = json.loads(text).get("error", text)
        except (ValueError, AttributeError):
            pass
        raise ProbeError(f"HTTP {e.code}: {_one_line(text)}", dead=any(m in text for m in DEAD_STUB_MARKERS)) from None
    except (TimeoutError, socket.timeout):
        raise ProbeError(f"no answer within {timeout_s:g} s", dead=True) from None
    except OSError as e:  # refused, reset: no server there
        raise ProbeError(f"server unreachable: {_one_line(str(getattr(e, 'reason', e)))}", dead=True) from None
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        raise ProbeError(f"answer is not JSON: {_one_line(raw[:100].decode(errors='replace'))}") from None


def repository_models(url: str, timeout_s: float = 5.0) -> list[dict]:
    """The repository index: ``[{"name", "version", "state", "reason"?}, ...]``."""
    index = http(url, "/v2/repository/index", {}, timeout_s)
    if not isinstance(index, list):
        raise ProbeError(f"repository index is not a list: {_one_line(str(index))}")
    return index


def _probe_llm(url: str, model: str, timeout_s: float) -> None:
    body = {"inputs": [{"name": "input_ids", "shape": [1, 1], "datatype": "INT64", "data": [0]}]}
    answer = http(url, f"/v2/models/{model}/infer", body, timeout_s)
    outputs = {o.get("name"): o for o in answer.get("outputs", [])} if isinstance(answer, dict) else {}
    logits = outputs.get("logits")
    if not logits or len(logits.get("shape", [])) != 2 or logits["shape"][0] != 1:
        raise ProbeError(f"answer has no logits [1, vocab]: outputs {sorted(outputs)}")
    if len(logits.get("data", [])) != logits["shape"][1]:
        raise ProbeError(f"logits carry {len(logits.get('data', []))} values for shape {logits['shape']}")
    if "profile_index" not in outputs:
        raise ProbeError("answer has no profile_index")


GENERATE_PROBE = {"input_ids": [1], "max_tokens": 1}
GENERATE_REFUSED = {"input_ids": [1], "max_tokens": 0}  # refused in execute(), never queued behind busy slots


def _refuses_at_once(url: str, model: str, timeout_s: float) -> bool:
    """True when ``model`` answers a bad request with its own 400: its scheduler thread runs."""
    try:
        http(url, f"/v2/models/{model}/generate", GENERATE_REFUSED, timeout_s)
    except ProbeError as e:
        return str(e).startswith("HTTP 400") and "max_tokens 0" in str(e)
    return False


def _probe_generate(url: str, model: str, timeout_s: float) -> None:
    try:
        answer = http(url, f"/v2/models/{model}/generate", GENERATE_PROBE, timeout_s)
    except ProbeError as e:
        if e.dead and str(e).startswith("no answer within") and _refuses_at_once(url, model, timeout_s):
            raise ProbeError(f"busy: {e} to a 1-token request, but bad requests are refused at once "
                             "(every sequence slot in use and requests queued)", dead=False) from None
        raise
    ids = answer.get("output_ids") if isinstance(answer, dict) else None
    if isinstance(ids, list) and len(ids) == 1:
        ids = ids[0]
    if not isinstance(ids, int) or isinstance(ids, bool):  # Triton's /generate sends one element as a scalar
        raise ProbeError(f"answer has no output_ids of 1 token: {_one_line(str(answer))}")


def _probe_ready_only(url: str, model: str, timeout_s: float) -> None:
    http(url, f"/v2/models/{model}/ready", None, timeout_s)


def probe_model(url: str, model: str, timeout_s: float = 5.0) -> ModelHealth:
    """One real request to ``model``; never raises."""
    t0 = time.perf_counter()
    try:
        config = http(url, f"/v2/models/{model}/config", None, timeout_s)
        inputs = {i.get("name") for i in config.get("input", [])}
        outputs = {o.get("name") for o in config.get("output", [])}
        decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled"))
        if "input_ids" in inputs and "logits" in outputs and not decoupled:
            _probe_llm(url, model, timeout_s)
        elif (decoupled and {"input_ids", "max_tokens"} <= inputs) or model == "generate":
            _probe_generate(url, model, timeout_s)
        else:
            _probe_ready_only(url, model, timeout_s)
    except ProbeError as e:
        return ModelHealth(model, False, str(e), e.dead, (time.perf_counter() - t0) * 1e3)
    return ModelHealth(model, True, ms=(time.perf_counter() - t0) * 1e3)


def probe(url: str, models: list[str] | None = None, timeout_s: float = 5.0) -> list[ModelHealth]:
    """Every model's health. ``models=None`` probes each model in the repository index.

    A model the index lists as not READY fails with the index's reason; one named
    in ``models`` but absent from the index fails too. A server that does not
    answer gives one failing entry, ``"server"``.
    """
    try:
        index = repository_models(url, timeout_s)
    except ProbeError as e:
        return [ModelHealth("server", False, str(e), e.dead)]
    states = {m.get("name"): m for m in index}
    names = sorted(states) if models is None else list(models)
    results = []
    for name in names:
        entry = states.get(name)
        if entry is None:
            results.append(ModelHealth(name, False, "not in the server's repository index"))
        elif entry.get("state") != "READY":
            reason = _one_line(entry.get("reason") or "no reason given")
            results.append(ModelHealth(name, False, f"state {entry.get('state', 'unknown')}: {reason}"))
        else:
            results.append(probe_model(url, name, timeout_s))
    return results


def verdict(results: list[ModelHealth], mode: str = "ready") -> list[ModelHealth]:
    """The failures that count: every failure for ``ready``, only the ones a restart fixes for ``live``."""
    return [r for r in results if not r.ok and (mode == "ready" or r.dead)]
