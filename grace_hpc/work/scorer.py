"""OptionScorer: exact option probabilities from an OpenAI-compatible engine (the I/O half of options.py).

For one prompt it sends 1 + (number of spellings) echo requests concurrently: the bare prompt, then prompt +
each continuation; options.py turns the echoed log-probs into the distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grace_hpc.work.client import Reply, Upstream, gather_all
from grace_hpc.work.options import Echo, OptionScores, continuation_logprob, option_scores, parse_echo
from grace_hpc.work.tasks import OptionsExtract

__all__ = ["OptionScorer", "ScoredOptions"]


@dataclass(frozen=True)
class ScoredOptions:
    scores: OptionScores
    tokens: dict[str, list[str]]  # continuation -> the tokens it was scored as (for audit)
    replies: tuple[Reply, ...]


@dataclass(frozen=True)
class OptionScorer:
    upstream: Upstream

    async def echo(self, model: str, text: str) -> tuple[Echo, Reply]:
        """The prompt log-probs of `text` (`echo: true`), validated by options.parse_echo."""
        # logprobs=0: the chosen token's log-prob only (no top-k needed); max_tokens=1 because some engines
        # (llama-cpp-python) read max_tokens<=0 as "up to the context size".
        payload: dict[str, Any] = {
            "model": model, "prompt": text, "echo": True, "logprobs": 0, "max_tokens": 1, "temperature": 0.0,
        }
        reply = await self.upstream.post("/completions", payload)
        return parse_echo(reply.body, text, model), reply

    async def score(self, model: str, prompt: str, rule: OptionsExtract) -> ScoredOptions:
        base = prompt.rstrip()
        spellings = [(opt, cont) for opt in rule.options for cont in rule.variants(opt)]
        results = await gather_all(self.echo(model, base), *(self.echo(model, base + c) for _, c in spellings))
        (bare, bare_reply), rest = results[0], results[1:]
        per_option: dict[str, list[float]] = {opt: [] for opt in rule.options}
        tokens: dict[str, list[str]] = {}
        for (opt, cont), (full, _) in zip(spellings, rest, strict=True):
            lp, toks = continuation_logprob(bare, full, cont)
            per_option[opt].append(lp)
            tokens[cont] = list(toks)
        scores = option_scores(per_option, rule.values)
        return ScoredOptions(scores, tokens, (bare_reply, *(r for _, r in rest)))
