"""Scale to zero through the router: a request for a model with no replica is demand the fleet controller sees;
it waits for the first replica (cold_start_wait_s), or gets a 503 with Retry-After, or the cloud meanwhile."""

import threading
import time
from pathlib import Path

import openai
import pytest

from grace_hpc.fleet.demand import DemandFile
from grace_hpc.registry.store import Registry
from grace_hpc.router import create_app, serve_in_thread
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
