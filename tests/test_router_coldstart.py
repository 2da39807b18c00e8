"""Scale to zero through the router: a request for a model with no replica is demand the fleet controller sees;
it waits for the first replica (cold_start_wait_s), or gets a 503 with Retry-After, or the cloud meanwhile."""

import json
import threading
import time
from pathlib import Path

import openai
import pytest
import requests

from grace_hpc.fleet.demand import DemandFile
from grace_hpc.registry.store import Registry
from grace_hpc.router import coldstart, create_app, serve_in_thread
from tests.support.router_env import canned_upstream, record, routing


def table(wait_s: float, cloud: bool = False) -> dict:
    default = {"name": "default", "models": ["cold"], "cold_start_wait_s": wait_s}
    if not cloud:
        return {"categories": [default]}
    return {"categories": [{**default, "cloud": ["standin"]}],
            "cloud": [{"name": "standin", "base_url": "{cloud}", "api_key_env": "STANDIN_KEY",
                       "default_model": "canned"}]}


def wanted(folder: Path, model: str = "cold") -> int:
    demand = DemandFile(folder).read()
    return 0 if demand is None or model not in demand.models else demand.models[model].waiting


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def serve(tmp_path: Path, data: dict, environ: dict | None = None):
    registry = Registry(tmp_path / "registry" / "registry.json")
    app = create_app(routing(data), registry, environ=environ or {}, poll_interval_s=0.1,
                     demand_file=DemandFile(registry.path.parent))
    return registry, serve_in_thread(app)


def test_a_request_for_a_model_with_no_replica_waits_for_the_first_one_and_is_answered(tmp_path):
    registry, running = serve(tmp_path, table(wait_s=20))
    answers = []
    with canned_upstream() as upstream, running as url, openai.OpenAI(base_url=f"{url}/v1", api_key="x",
                                                                        max_retries=0) as client:
        asker = threading.Thread(target=lambda: answers.append(
            client.chat.completions.create(model="cold", messages=[{"role": "user", "content": "hi"}])))
        asker.start()
        wait_for(lambda: wanted(registry.path.parent) == 1)  # what the fleet controller starts a replica for
        assert answers == []
        registry.register(record("cold-1", upstream, "cold"))  # the first replica is ready
        asker.join(timeout=20)
    assert [a.choices[0].message.content for a in answers] == ["ok"]


def test_no_replica_within_the_wait_is_a_503_with_retry_after_and_stays_wanted(tmp_path):
    registry, running = serve(tmp_path, table(wait_s=1))
    with running as url, openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model="cold", messages=[{"role": "user", "content": "hi"}])
        assert time.monotonic() - started >= 1
        assert err.value.status_code == 503 and err.value.response.headers["Retry-After"] == "1"
        wait_for(lambda: wanted(registry.path.parent) == 1)


def test_a_category_with_a_cloud_fallback_is_served_by_it_meanwhile_and_still_wants_the_replica(tmp_path):
    with canned_upstream() as cloud:
        data = table(wait_s=20, cloud=True)
        data["cloud"][0]["base_url"] = cloud
        registry, running = serve(tmp_path, data, environ={"STANDIN_KEY": "k"})
        with running as url, openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
            started = time.monotonic()
            reply = client.chat.completions.with_raw_response.create(
                model="cold", messages=[{"role": "user", "content": "hi"}])
            assert time.monotonic() - started < 5  # not held for the cold start
            assert reply.headers["X-Grace-Served-By"] == "cloud:standin"
            wait_for(lambda: wanted(registry.path.parent) == 1)


def read_events(url: str, body: dict) -> tuple[requests.Response, list[str]]:
    """POST a streamed request; the response and its raw SSE lines (comments included), read as they come."""
    response = requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=60)
    return response, [line for line in response.iter_lines(decode_unicode=True) if line]


@pytest.mark.engine
def test_a_streamed_request_gets_keepalive_comments_while_waiting_then_the_replicas_stream(tmp_path, monkeypatch,
                                                                                         llama_server):
    monkeypatch.setattr(coldstart, "KEEPALIVE_S", 0.3)
    engine = llama_server(alias="cold")
    registry, running = serve(tmp_path, table(wait_s=30))
    question = {"model": "cold", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}
    seen: list = []
    with running as url, openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
        raw = threading.Thread(target=lambda: seen.append(read_events(url, {**question, "stream": True})))
        raw.start()
        wait_for(lambda: wanted(registry.path.parent) == 1)
        chunks: list = []
        asker = threading.Thread(target=lambda: chunks.extend(client.chat.completions.create(**question, stream=True)))
        asker.start()
        wait_for(lambda: wanted(registry.path.parent) == 2)
        time.sleep(1)  # a few keep-alive periods without a replica
        registry.register(record("cold-1", engine.base_url, "cold"))
        asker.join(timeout=30)
        raw.join(timeout=30)
    with openai.OpenAI(base_url=engine.base_url, api_key="x", max_retries=0) as direct:
        expected = [c.choices[0].delta.content for c in direct.chat.completions.create(**question, stream=True)]
    # the official client reads the waited-for stream as if nothing had happened
    assert [c.choices[0].delta.content for c in chunks] == expected and len(expected) >= 3
    response, lines = seen[0]
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    comments = [line for line in lines if line.startswith(":")]
    assert len(comments) >= 3  # one at once, then every KEEPALIVE_S
    assert set(comments) == {": waiting for a replica of cold"}  # this router knows no launch manifests
    assert lines.index(comments[-1]) < lines.index(next(x for x in lines if x.startswith("data: {")))
    assert lines[-1] == "data: [DONE]"


def test_a_streamed_request_that_no_replica_came_for_ends_with_an_error_event_the_client_raises(tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.setattr(coldstart, "KEEPALIVE_S", 0.3)
    _, running = serve(tmp_path, table(wait_s=1))
    question = {"model": "cold", "messages": [{"role": "user", "content": "hi"}]}
    with running as url, openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
        response, lines = read_events(url, {**question, "stream": True})
        with pytest.raises(openai.APIError) as err:
            list(client.chat.completions.create(**question, stream=True))
    assert response.status_code == 200  # sent before the wait ended: a status can no longer say it
    assert lines[0] == ": waiting for a replica of cold" and lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert error["code"] == "no_endpoint_available" and "'cold'" in error["message"]
    assert err.value.body["code"] == "no_endpoint_available"
