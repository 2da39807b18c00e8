"""A flat table of a merged run: one column per input field, per option probability and per grid value.

`output` holds one JSON object per row (question -> result). For plotting, `work merge --flat` spreads it out:

    input.<column>                                      the input row's fields
    <question>.text / .<parsed field>                   text and parsed answers
    <question>.probs.<option>, .mean, .std, .entropy_nats, .covered_mass      an option distribution
    <question>.<grid>=<value>.probs.<option> ...        the same, once per grid value

Per-token audit fields (`tokens`, raw `logprobs`) stay in the JSON columns; lists become JSON strings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["flatten_output", "flat_record"]

_AUDIT = frozenset({"tokens", "logprobs"})


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        if "by_value" in value and "grid" in value:  # a grid question: one block per value
            for v, result in value["by_value"].items():
                _flatten(f"{prefix}.{value['grid']}={v}", result, out)
            return
        for key, item in value.items():
            if key not in _AUDIT:
                _flatten(f"{prefix}.{key}", item, out)
    elif isinstance(value, list):
        out[prefix] = json.dumps(value, ensure_ascii=False)
    else:
        out[prefix] = value


def flatten_output(output: Mapping[str, Any]) -> dict[str, Any]:
    """question -> result JSON, as flat `a.b.c` columns."""
    out: dict[str, Any] = {}
    for question, result in output.items():
        _flatten(question, result, out)
    return out


def flat_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """One merged record (row_id, position, model, status, input JSON, output JSON ...) as one flat row."""
    flat = {k: record[k] for k in ("row_id", "position", "model", "status", "error", "served_model", "engine")}
    flat.update({f"input.{k}": v for k, v in json.loads(record["input"] or "{}").items()})
    flat.update(flatten_output(json.loads(record["output"] or "{}")))
    return flat
