"""The router's endpoint choice is a pure function: category resolution and attempt order, without sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from grace_hpc.config.loader import load_yaml_model
from grace_hpc.config.routing import Routing
from grace_hpc.registry.records import EndpointState
from grace_hpc.router.policy import (
    CloudAttempt,
    EndpointAttempt,
    Load,
    MissingModel,
    PromptSize,
    UnknownTarget,
    fits,
    plan,
    prompt_size,
    prompt_text,
    resolve,
    too_long,
    undecided,
)
from tests.support.router_env import record

ROOT = Path(__file__).resolve().parents[1]

TABLE = Routing.model_validate({
    "max_queue_depth": 4,
    "categories": [
        {"name": "code", "models": ["coder-7b", "coder-1b"], "cloud": ["deepseek"]},
        {"name": "orchestration", "cloud_only": True, "cloud": ["deepseek", "openai"]},
        {"name": "embeddings", "models": ["bge-m3"], "cloud": ["openai"]},
        {"name": "default", "models": ["small"]},
    ],
    "cloud": [
        {"name": "deepseek", "base_url": "https://api.deepseek.com/v1", "api_key_env": "DEEPSEEK_API_KEY",
         "default_model": "deepseek-chat"},
        {"name": "openai", "base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY",
         "default_model": "gpt-4o", "model_map": {"embeddings": "text-embedding-3-small"}},
    ],
})


def ep(endpoint_id: str, model: str, **kw):  # a record on a made-up port
    return record(endpoint_id, f"http://10.0.0.1:{8000 + len(endpoint_id)}/v1", model, **kw)


RECORDS = [
    ep("c7-a", "coder-7b", served="Qwen/Coder-7B"), ep("c7-b", "coder-7b", served="Qwen/Coder-7B", max_num_seqs=8),
    ep("c1", "coder-1b"), ep("s", "small"), ep("bge", "bge-m3"),
]


def ids(attempts) -> list[str]:
    return [a.record.id if isinstance(a, EndpointAttempt) else f"cloud:{a.provider.name}" for a in attempts]


@pytest.mark.parametrize("model, header, category, models", [
    ("code", None, "code", ("coder-7b", "coder-1b")),
    ("category:code", None, "code", ("coder-7b", "coder-1b")),
    ("small", "code", "code", ("small", "coder-7b", "coder-1b")),
    ("coder-1b", "code", "code", ("coder-1b", "coder-7b")),  # a named model first, then its category's list
    ("Qwen/Coder-7B", None, "code", ("Qwen/Coder-7B",)),  # a served alias names one model
    ("small", None, "default", ("small",)),
    (None, "code", "code", ("coder-7b", "coder-1b")),  # the header alone names the category
    ("orchestration", None, "orchestration", ()),  # cloud_only: never a local model
])
def test_model_alias_category_and_header_resolve_to_a_route(model, header, category, models):
    route = resolve(TABLE, RECORDS, model, header)
    assert route.category.name == category and route.models == models


@pytest.mark.parametrize("model, header", [("nope", None), ("category:nope", None), ("small", "nope")])
def test_unknown_names_list_what_exists(model, header):
    with pytest.raises(UnknownTarget) as info:
        resolve(TABLE, RECORDS, model, header)
    message = info.value.message()
    assert "code, orchestration, embeddings, default" in message
    assert "coder-7b" in message and "Qwen/Coder-7B" in message


def test_least_loaded_per_unit_of_capacity_comes_first_then_the_next_model_then_the_cloud():
    route = resolve(TABLE, RECORDS, "code", None)
    loads = {"c7-a": Load(in_flight=1), "c7-b": Load(in_flight=3)}  # 2/2 vs 4/8: the bigger one is less loaded
    attempts = plan(route, TABLE, RECORDS, loads, cloud_ready=["deepseek"])
    assert ids(attempts) == ["c7-b", "c7-a", "c1", "cloud:deepseek"]
    assert isinstance(attempts[-1], CloudAttempt) and attempts[-1].model == "deepseek-chat"


def test_only_ready_endpoints_not_ejected_with_room_and_context_are_planned():
    records = [
        ep("starting", "coder-7b", state=EndpointState.STARTING),
        ep("draining", "coder-7b", state=EndpointState.DRAINING),
        ep("ejected", "coder-7b"), ep("full", "coder-7b", max_num_seqs=2), ep("short", "coder-1b", max_model_len=100),
        ep("ok", "coder-1b", max_model_len=None),
    ]
    loads = {"ejected": Load(ejected=True), "full": Load(in_flight=2 + 4)}  # capacity + max_queue_depth
    route = resolve(TABLE, records, "code", None)
    assert ids(plan(route, TABLE, records, loads, prompt=PromptSize(100, 400))) == ["ok"]
    assert ids(plan(route, TABLE, records, loads, prompt=PromptSize(20, 99))) == ["short", "ok"]


def test_without_a_model_a_request_is_refused_unless_the_table_names_a_default():
    with pytest.raises(MissingModel, match="you must provide a model parameter"):
        resolve(TABLE, RECORDS, None, None)
    with pytest.raises(MissingModel):
        resolve(TABLE, RECORDS, "", None)
    explicit = Routing.model_validate({**TABLE.model_dump(), "default_target": "category:code"})
    assert resolve(explicit, RECORDS, None, None).category.name == "code"
    with pytest.raises(ValueError, match="default_target 'category:nope' names no category"):
        Routing.model_validate({**TABLE.model_dump(), "default_target": "category:nope"})


def test_a_prompt_fits_by_byte_bounds_when_they_decide_and_by_the_engines_count_otherwise():
    short = ep("short", "coder-1b", max_model_len=100)
    assert fits(short, PromptSize(low=100, high=500), {}) is False  # even at 4 bytes a token it is too long
    assert fits(short, PromptSize(low=10, high=99), {}) is True  # even at 1 byte a token it fits
    assert fits(short, PromptSize(low=30, high=150), {}) is None  # only its tokenizer can tell
    assert fits(short, PromptSize(low=30, high=150), {"short": 120}) is False
    assert fits(short, PromptSize(low=30, high=150), {"short": 99}) is True
    assert fits(ep("open", "small", max_model_len=None), PromptSize(10**6, 10**7), {}) is True


def test_a_prompt_too_long_for_every_ready_endpoint_is_the_clients_mistake_with_the_limit_and_count():
    records = [ep("a", "coder-7b", max_model_len=100), ep("b", "coder-1b", max_model_len=200),
               ep("later", "coder-1b", max_model_len=10_000, state=EndpointState.STARTING)]
    route = resolve(TABLE, records, "code", None)
    huge = PromptSize(low=300, high=1300)
    verdict = too_long(route, records, huge, {})
    assert verdict is not None and (verdict.limit, verdict.tokens) == (200, "at least 300")
    assert "maximum context length is 200 tokens" in verdict.message() and "at least 300" in verdict.message()
    middling = PromptSize(low=150, high=700)
    assert [r.id for r in undecided(route, records, middling, {})] == ["b"]  # `a` is decided: too short
    assert too_long(route, records, middling, {}) is None  # `b` may take it
    assert too_long(route, records, middling, {"b": 250}).tokens == "250"
    assert too_long(route, records, middling, {"b": 150}) is None
    assert too_long(route, [], huge, {}) is None  # nothing ready is an outage (503), not the client's mistake


def test_the_cloud_is_used_only_for_providers_whose_key_is_set_and_maps_models():
    route = resolve(TABLE, [], "embeddings", None)
    assert ids(plan(route, TABLE, [], {}, cloud_ready=[])) == []
    [cloud] = plan(route, TABLE, [], {}, cloud_ready=["openai", "deepseek"])
    assert cloud.model == "text-embedding-3-small"


def test_cloud_only_categories_skip_live_local_endpoints():
    records = [ep("s", "small")]
    route = resolve(TABLE, records, "category:orchestration", None)
    attempts = plan(route, TABLE, records, {}, cloud_ready=["openai", "deepseek"])
    assert ids(attempts) == ["cloud:deepseek", "cloud:openai"]


def test_equal_loads_rotate_so_sequential_requests_spread():
    records = [ep("a", "small"), ep("b", "small"), ep("c", "small")]
    route = resolve(TABLE, records, "small", None)
    firsts = {ids(plan(route, TABLE, records, {}, rotation=k))[0] for k in range(3)}
    assert firsts == {"a", "b", "c"}


def test_prompt_bounds_count_chat_content_prompts_and_inputs_and_the_text_is_what_a_tokenizer_sees():
    chat = {"messages": [{"role": "user", "content": "x" * 400}]}
    assert prompt_size(chat) == PromptSize(100, 400 + 16 + 16)  # a template's tokens per message and per request
    assert prompt_size({"prompt": ["ab" * 200, "cd" * 200]}).low == 200
    assert prompt_size({"input": "y" * 40, "model": "z" * 4000}).low == 10
    multi = {"messages": [{"role": "system", "content": "be brief"},
                          {"role": "user", "content": [{"type": "text", "text": "w" * 8}]}]}
    assert prompt_size(multi).low == 4 and prompt_text(multi) == "be brief\n" + "w" * 8


@pytest.mark.parametrize("name", ["default.yaml", "local.yaml"])
def test_shipped_routing_tables_name_catalog_models_and_seed_002_categories(name):
    import yaml

    table = load_yaml_model(ROOT / "routing" / name, Routing)
    catalog = {m["name"] for m in yaml.safe_load((ROOT / "configs" / "models.yaml").read_text())["models"]}
    test_models = {"tiny", "tiny-embed"}
    assert {c.name for c in table.categories} == {
        "intent", "orchestration", "code", "code-validation", "data-analysis", "math", "bio", "docs", "embeddings",
        "safety", "default"}
    assert {m for c in table.categories for m in c.models} <= catalog | test_models
    if name == "default.yaml":
        assert table.category("orchestration").cloud_only
        assert table.provider("deepseek").price_in_per_mtok == 0.27
