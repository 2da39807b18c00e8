"""The log-prob canary: before any row is scored, prove the engine's echoed prompt log-probs are where they belong.

Option probabilities are read from *echoed prompt* log-probs (options.py). An engine can get those wrong without
any error: llama-cpp-python's server takes them at the wrong positions on models without a BOS token (its issue
#1983: on SmolLM2-135M, " Paris" after "The capital of France is" is echoed at -8.45 where the logits give -0.26),
and llama.cpp's own server ignores `echo`. So each (endpoint, model) is first checked against itself:

    next-token view:  POST /completions {prompt: P, max_tokens: 1, logprobs: K}   -> log P(t | P) for the top K t
    echo view:        POST /completions {prompt: P + t, echo: true, ...}         -> the echoed log-prob of t

The two views come from the same forward pass of the same engine, so they agree up to float noise (TOLERANCE_NATS);
a shifted echo is off by nats. For each of a few prompts the top `per_prompt` next tokens are compared; a probe
whose token does not come back as exactly one prompt token (the tokenizer merged it with the prompt) is skipped.
Missing, ignored or inconsistent echoes fail the canary, and the worker stops before its first row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from grace_hpc.errors import GraceError, WorkError
from grace_hpc.registry.verdicts import LogprobVerdict, cached_verdict, record_verdict
from grace_hpc.work.client import Reply, Upstream
from grace_hpc.work.options import continuation_logprob
from grace_hpc.work.scorer import OptionScorer

__all__ = ["PROBES", "TOLERANCE_NATS", "EngineId", "CanaryResult", "identify_engine", "run_canary",
           "check_engine", "canary_error"]

#: prompts whose likely next tokens start with a space (so they tokenize apart from the prompt); no trailing space
PROBES = ("The capital of France is", "Monday, Tuesday, Wednesday,", "One, two, three, four,")
#: float32 engines agree with themselves to ~1e-5 nats; a misaligned echo is off by whole nats
TOLERANCE_NATS = 0.02
TOP_K = 5
MIN_COMPARED = 2

#: /v1/models `owned_by` -> a name a person recognises (llama-cpp-python's server says "me")
_OWNERS = {"me": "llama-cpp-python server", "llamacpp": "llama.cpp server"}


@dataclass(frozen=True)
class EngineId:
    name: str
    version: str | None


@dataclass(frozen=True)
class CanaryResult:
    passed: bool
    compared: int  # (prompt, token) pairs compared
    detail: str  # what was compared; the worst disagreement, or why the canary could not compare
    served_by: str | None  # the one registry endpoint that answered every canary request, when the router says


async def identify_engine(upstream: Upstream, model: str) -> EngineId:
    """The engine behind `model` and its version, from GET /models (owned_by) and GET /version (vLLM, grace-scoring).
    Through the router the name is the registry's engine (X-Grace-Engine) and the version is unknown."""
    name = "unknown engine"
    try:
        reply = await upstream.get("/models")
        for m in reply.body.get("data") or []:
            if isinstance(m, dict) and m.get("id") == model and m.get("owned_by"):
                name = _OWNERS.get(str(m["owned_by"]), str(m["owned_by"]))
        name = reply.headers.get("x-grace-engine", name)
    except GraceError:
        pass
    try:
        version = (await upstream.get("/version", root=True)).body.get("version")
    except GraceError:
        version = None
    return EngineId(name, str(version) if version else None)


def _top_logprobs(reply: Reply) -> dict[str, float]:
    try:
        top = reply.body["choices"][0]["logprobs"]["top_logprobs"][0]
        return {str(t): float(lp) for t, lp in top.items()}
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return {}


async def run_canary(upstream: Upstream, model: str, *, probes: tuple[str, ...] = PROBES, per_prompt: int = 2,
                     tolerance: float = TOLERANCE_NATS) -> CanaryResult:
    scorer = OptionScorer(upstream)
    compared, worst, worst_text, served = 0, 0.0, "", set()
    for prompt in probes:
        try:
            bare, bare_reply = await scorer.echo(model, prompt)
        except WorkError as exc:  # echo ignored or malformed
            return CanaryResult(False, compared, str(exc), None)
        nxt = await upstream.post("/completions", {"model": model, "prompt": prompt, "max_tokens": 1,
                                                   "logprobs": TOP_K, "temperature": 0.0})
        served.update(r.headers.get("x-grace-served-by") for r in (bare_reply, nxt))
        top = _top_logprobs(nxt)
        if not top:
            return CanaryResult(False, compared, "the engine returned no next-token `top_logprobs` for "
                                f"{prompt!r} (max_tokens 1, logprobs {TOP_K})", None)
        for token, expected in sorted(top.items(), key=lambda kv: -kv[1])[:per_prompt]:
            try:
                full, reply = await scorer.echo(model, prompt + token)
                echoed, tokens = continuation_logprob(bare, full, token)
            except WorkError as exc:
                if "ignored `echo`" in str(exc):
                    return CanaryResult(False, compared, str(exc), None)
                continue  # merged with the prompt's end: this probe says nothing
            served.add(reply.headers.get("x-grace-served-by"))
            if len(tokens) != 1 or not math.isfinite(echoed):
                continue
            compared += 1
            gap = abs(echoed - expected)
            if gap >= worst:
                worst = gap
                worst_text = (f"echoed log-prob of {token!r} after {prompt!r} is {echoed:.4f}, its next-token "
                              f"log-prob (max_tokens 1, logprobs {TOP_K}) is {expected:.4f}")
    served.discard(None)
    by = next(iter(served)) if len(served) == 1 else None
    if compared < MIN_COMPARED:
        return CanaryResult(False, compared, f"only {compared} of the probe tokens came back as single prompt "
                            f"tokens (need {MIN_COMPARED}); the echo cannot be checked", by)
    passed = worst <= tolerance
    detail = (f"{compared} (prompt, next token) pairs: echoed prompt log-probs == next-token log-probs within "
              f"{worst:.2g} nats" if passed else worst_text)
    return CanaryResult(passed, compared, detail, by)


async def check_engine(upstream: Upstream, model: str, verdicts: Path | None, *, endpoint: str | None = None,
                       clock: Callable[[], float] = time.time) -> LogprobVerdict:
    """The verdict for `model` behind `upstream` (registry `endpoint` id, if known): reused for a known engine
    version, else checked (and stored in `verdicts`, when given). Raises the canary error when the engine's
    log-probs cannot be trusted."""
    engine = await identify_engine(upstream, model)
    cached = cached_verdict(verdicts, engine.name, engine.version, model) if verdicts else None
    if cached is None:
        result = await run_canary(upstream, model)
        cached = LogprobVerdict(endpoint=endpoint or result.served_by or upstream.base_url, model=model,
                                engine=engine.name, version=engine.version, passed=result.passed,
                                detail=result.detail, checked_at=clock())
        if verdicts is not None:
            record_verdict(verdicts, cached)
    elif endpoint is not None and cached.endpoint != endpoint and verdicts is not None:
        record_verdict(verdicts, cached.model_copy(update={"endpoint": endpoint}))  # so `status` shows it here too
    if not cached.passed:
        raise canary_error(model, engine, cached.endpoint, cached.detail)
    return cached


def canary_error(model: str, engine: EngineId, where: str, detail: str) -> WorkError:
    version = engine.version or "(version not reported)"
    return WorkError(
        f"model {model!r}: the log-prob canary failed on {engine.name} {version} at {where}: {detail}. Option "
        "probabilities from this engine would be wrong, so no row was sent. Score options with vLLM (GPU), or on "
        "CPU with grace-hpc's scoring engine (`python -m grace_hpc.engines.scoring_server -m MODEL.gguf`, then "
        "`grace-hpc registry add`: docs/work.md); llama-cpp-python's server misplaces echoed log-probs on "
        "models without a BOS token (its issue #1983) and llama.cpp's own server ignores `echo`"
    )
