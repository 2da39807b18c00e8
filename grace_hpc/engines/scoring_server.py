"""An OpenAI-compatible CPU engine whose prompt log-probs are exact: llama.cpp's full logits, log-softmax in numpy.

    python -m grace_hpc.engines.scoring_server -m MODEL.gguf --host H --port P [--alias NAME] [-c CTX] [-t N]

Why: option probabilities (grace_hpc/work/options.py) need the log-prob of every prompt token (`echo`). On CPU,
llama.cpp's own server ignores `echo`, and llama-cpp-python's server places echoed log-probs at the wrong positions
on models without a BOS token (its issue #1983) and sorts the whole vocabulary in Python per prompt token
(0.3 s for 6 tokens of SmolLM2-135M). Here one request is: tokenize as llama.cpp does (BOS only if the model adds
one), evaluate the prompt with logits for every position (`llama_cpp.Llama(logits_all=True)`), and take a float64
log-softmax of the rows: row i-1 scores token i. That is the in-process reference itself, served over HTTP. The KV
cache, logit rows and row normalisers of the longest prefix already evaluated are reused (as llama-cpp-python's
own generate reuses the prefix): the scorings of one question share their prompt.

`/v1/completions` with `echo` or `logprobs` answers in the OpenAI legacy shape (vLLM's): `tokens`,
`token_logprobs` (None for the first token), `top_logprobs` (K per position when `logprobs: K`), `text_offset`,
and at most one generated token, the most likely one. Other completions and `/v1/chat/completions` generate with
llama-cpp-python. Also `/v1/models`, `/health`, `/version`. One model, one request at a time (llama.cpp contexts
are not thread-safe); the API key comes from $LLAMA_API_KEY, never argv. Needs llama-cpp-python (the `test` extra,
or `pip install llama-cpp-python`: it compiles llama.cpp, ~5 min the first time).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from aiohttp import web

from grace_hpc.engines.llamacpp_server import parse_args

__all__ = ["ENGINE_NAME", "row_logsumexp", "legacy_logprobs", "Scorer", "create_app", "main"]

ENGINE_NAME = "grace-scoring"
_KEY = web.AppKey("api_key", str)  # "" when no key is required
_LOCK = web.AppKey("lock", asyncio.Lock)


def row_logsumexp(logits: np.ndarray) -> np.ndarray:
    """float64 log-sum-exp of each row of `logits` (any float dtype): log P(token t | row) = logits[t] - this."""
    x = np.asarray(logits, dtype=np.float64)
    top = x.max(axis=1)
    return top + np.log(np.exp(x - top[:, None]).sum(axis=1))


def legacy_logprobs(logits: np.ndarray, lse: np.ndarray, tokens: Sequence[int], piece: Callable[[int], str],
                    top: int, first_scored: bool) -> dict[str, Any]:
    """OpenAI legacy `logprobs` for `tokens`: row i of `logits` (normaliser `lse[i]`) is the distribution of token
    i+1, so the prompt's last row scores the generated token. `first_scored`: the first token has a row of its own
    (no echo)."""
    pieces = [piece(t) for t in tokens]
    out_lp: list[float | None] = []
    out_top: list[dict[str, float] | None] = []
    offsets, at = [], 0
    for i, (tok, text) in enumerate(zip(tokens, pieces, strict=True)):
        offsets.append(at)
        at += len(text)
        row = i if first_scored else i - 1
        if row < 0:
            out_lp.append(None)
            out_top.append(None)
            continue
        out_lp.append(float(np.float64(logits[row, tok]) - lse[row]))
        if top > 0:
            full = np.asarray(logits[row], dtype=np.float64) - lse[row]
            best = np.argpartition(-full, top)[:top]
            out_top.append({piece(int(t)): float(full[t]) for t in best})
    return {"tokens": pieces, "token_logprobs": out_lp, "top_logprobs": out_top if top > 0 else None,
            "text_offset": offsets}


class Scorer:
    """One llama.cpp model with logits for every position; methods run in a worker thread, one at a time."""

    def __init__(self, path: str, alias: str, ctx: int, threads: int) -> None:
        import llama_cpp  # imported here: only this engine needs llama-cpp-python

        self.alias = alias
        self.version = f"{ENGINE_NAME} (llama-cpp-python {llama_cpp.__version__})"
        self.llm = llama_cpp.Llama(model_path=path, logits_all=True, n_ctx=ctx, n_threads=threads or None,
                                   verbose=False)
        self._lse = np.zeros(ctx, dtype=np.float64)  # log-sum-exp of each evaluated logit row
        self._lse_rows = 0  # rows of _lse that belong to the tokens in the context now

    def piece(self, token: int) -> str:
        return self.llm.detokenize([token]).decode("utf-8", errors="replace")

    def score(self, prompt: str, echo: bool, top: int, max_tokens: int) -> dict[str, Any]:
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        if not tokens:
            raise _bad("empty prompt")
        n = len(tokens)
        # Reuse the KV cache, logit rows and normalisers of the longest prefix this context already evaluated
        # (the scorings of one question share their prompt). The last token is always evaluated again.
        done = self.llm.input_ids[: self.llm.n_tokens].tolist()
        reuse = min(self.llm.longest_token_prefix(done, tokens), n - 1)
        self.llm.n_tokens = reuse
        self.llm.eval(tokens[reuse:])
        fresh = min(reuse, self._lse_rows)
        self._lse[fresh:n] = row_logsumexp(self.llm.scores[fresh:n])
        self._lse_rows = n
        generated = [int(np.argmax(self.llm.scores[n - 1]))] if max_tokens >= 1 else []
        if echo:  # rows 0..n-2 score the prompt's tokens 1..n-1; row n-1 scores the next token
            shown, logits, lse = list(tokens) + generated, self.llm.scores[:n], self._lse[:n]
        else:
            shown, logits, lse = generated, self.llm.scores[n - 1: n], self._lse[n - 1: n]
        logprobs = legacy_logprobs(logits, lse, shown, self.piece, top, first_scored=not echo)
        text = (prompt if echo else "") + "".join(self.piece(t) for t in generated)
        return {"text": text, "index": 0, "logprobs": logprobs,
                "finish_reason": "length", "usage": {"prompt_tokens": n, "completion_tokens": len(generated),
                                                     "total_tokens": n + len(generated)}}

    def generate(self, chat: bool, prompt: Any, **params: Any) -> dict[str, Any]:
        """Plain generation by llama-cpp-python (it moves the context: the cached normalisers are dropped)."""
        self._lse_rows = 0
        if chat:
            return dict(self.llm.create_chat_completion(prompt, **params))  # type: ignore[arg-type]
        return dict(self.llm.create_completion(prompt, **params))  # type: ignore[arg-type]


_MODEL = web.AppKey("scorer", Scorer)


def _auth(request: web.Request) -> None:
    key = request.app[_KEY]
    if key and not hmac.compare_digest(request.headers.get("Authorization", ""), f"Bearer {key}"):
        raise web.HTTPUnauthorized(text='{"error": {"message": "invalid API key"}}', content_type="application/json")


async def _in_thread(request: web.Request, fn: Any, *args: Any, **kwargs: Any) -> Any:
    async with request.app[_LOCK]:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": {"message": message}}), content_type="application/json")


async def _completions(request: web.Request) -> web.Response:
    _auth(request)
    body = await request.json()
    scorer = request.app[_MODEL]
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise _bad("prompt must be one string")
    echo, top = bool(body.get("echo")), body.get("logprobs")
    max_tokens = int(body.get("max_tokens") if body.get("max_tokens") is not None else 16)
    if echo or top is not None:
        if max_tokens > 1:
            raise _bad("with echo or logprobs this engine returns the prompt and at most one next token: "
                       "set max_tokens to 0 or 1")
        choice = await _in_thread(request, scorer.score, prompt, echo, int(top or 0), max_tokens)
        usage = choice.pop("usage")
        return web.json_response({"id": "cmpl-grace", "object": "text_completion", "model": scorer.alias,
                                  "choices": [choice], "usage": usage})
    params = {k: body[k] for k in ("max_tokens", "temperature", "top_p", "seed", "stop") if body.get(k) is not None}
    out = await _in_thread(request, scorer.generate, False, prompt, **params)
    return web.json_response({**out, "model": scorer.alias})


async def _chat(request: web.Request) -> web.Response:
    _auth(request)
    body = await request.json()
    scorer = request.app[_MODEL]
    params = {k: body[k] for k in ("max_tokens", "temperature", "top_p", "seed", "stop") if body.get(k) is not None}
    out = await _in_thread(request, scorer.generate, True, body.get("messages") or [], **params)
    return web.json_response({**out, "model": scorer.alias})


async def _models(request: web.Request) -> web.Response:
    _auth(request)
    return web.json_response({"object": "list", "data": [
        {"id": request.app[_MODEL].alias, "object": "model", "owned_by": ENGINE_NAME}]})


async def _version(request: web.Request) -> web.Response:
    return web.json_response({"version": request.app[_MODEL].version})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(scorer: Scorer, api_key: str | None) -> web.Application:
    app = web.Application(client_max_size=16 * 2**20)
    app[_MODEL] = scorer
    app[_KEY] = api_key or ""
    app[_LOCK] = asyncio.Lock()
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/version", _version)
    app.router.add_get("/health", _health)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """llama-server's flags as grace-hpc renders them (llamacpp_server.parse_args); one slot, CPU only. `-c` also
    sizes the logit rows kept for every position: ctx x vocabulary x 4 bytes (200 MB at 1024 for SmolLM2)."""
    args = parse_args(argv)
    if args.embedding:
        raise SystemExit("grace-hpc's scoring engine serves completions, not embeddings: use llamacpp_server")
    threads = args.threads or len(os.sched_getaffinity(0))
    scorer = Scorer(args.model, args.alias or os.path.basename(args.model), args.ctx_size, threads)
    print(f"{scorer.version} listening on {args.host}:{args.port} model={args.model}", flush=True)
    web.run_app(create_app(scorer, os.environ.get("LLAMA_API_KEY")), host=args.host, port=args.port,
                print=None, handle_signals=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
