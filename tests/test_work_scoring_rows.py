"""The scoring engine's alignment rule, on hand-made logits: row i-1 of the prompt's logits scores token i."""

from __future__ import annotations

import numpy as np
import pytest

from grace_hpc.engines.scoring_server import legacy_logprobs, row_logsumexp


def test_echo_row_i_minus_1_scores_token_i_and_the_first_token_has_none() -> None:
    logits = np.log(np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25], [0.6, 0.3, 0.1]]))
    out = legacy_logprobs(logits, row_logsumexp(logits), [2, 0, 1], lambda t: "abc"[t], top=0, first_scored=False)
    assert out["tokens"] == ["c", "a", "b"]
    assert out["token_logprobs"][0] is None
    assert out["token_logprobs"][1:] == pytest.approx([np.log(0.1), np.log(0.25)], abs=1e-12)
    assert out["text_offset"] == [0, 1, 2]


def test_without_echo_the_last_row_scores_the_generated_token_with_its_top_k() -> None:
    logits = np.log(np.array([[0.6, 0.3, 0.1]])) + 7.0  # unnormalised: the normaliser takes the 7 out
    out = legacy_logprobs(logits, row_logsumexp(logits), [0], lambda t: "abc"[t], top=2, first_scored=True)
    assert out["token_logprobs"] == pytest.approx([np.log(0.6)])
    assert out["top_logprobs"][0] == pytest.approx({"a": np.log(0.6), "b": np.log(0.3)})
