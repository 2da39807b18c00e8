"""The scaling policy of a deployment file: static servers read as before, elastic ones are checked on load."""

from pathlib import Path

import pytest

from grace_hpc.config.deployment import Deployment, Replicas
from grace_hpc.config.loader import load_yaml_model
from grace_hpc.errors import ConfigError


def deployment(tmp_path: Path, server_yaml: str, top: str = "") -> Deployment:
    path = tmp_path / "d.yaml"
    path.write_text(f"name: d\n{top}servers:\n  - name: a\n    partition: t4\n    models: [m]\n"
                    + "".join(f"    {line}\n" for line in server_yaml.splitlines()))
    return load_yaml_model(path, Deployment)


def error(tmp_path: Path, server_yaml: str, top: str = "") -> str:
    with pytest.raises(ConfigError) as err:
        deployment(tmp_path, server_yaml, top)
    message = str(err.value)
    assert "\n" not in message
    return message.removeprefix(f"{tmp_path / 'd.yaml'}: ")


def test_a_plain_replica_count_is_a_static_server(tmp_path):
    server = deployment(tmp_path, "replicas: 2").servers[0]
    assert server.replicas == Replicas(min=2, max=2)
    assert not server.elastic


def test_no_replicas_key_is_one_static_replica(tmp_path):
    server = deployment(tmp_path, "").servers[0]
    assert server.replicas == Replicas(min=1, max=1)
    assert not server.elastic


def test_an_elastic_server_reads_its_whole_policy(tmp_path):
    d = deployment(tmp_path, "replicas: {min: 0, max: 4}\nscale_up: {outstanding_per_replica: 2, for_s: 5}\n"
                             "scale_down: {idle_timeout_s: 30}\nhandover_lead_s: 90", top="max_gpus: 3\n")
    server = d.servers[0]
    assert server.elastic
    assert (server.replicas.min, server.replicas.max) == (0, 4)
    assert (server.scale_up.outstanding_per_replica, server.scale_up.for_s) == (2, 5)
    assert server.scale_down.idle_timeout_s == 30
    assert server.handover_lead_s == 90
    assert d.max_gpus == 3


def test_handover_lead_defaults_to_measured(tmp_path):
    assert deployment(tmp_path, "replicas: {min: 1, max: 2}").servers[0].handover_lead_s is None


def test_min_above_max_is_one_line(tmp_path):
    assert error(tmp_path, "replicas: {min: 3, max: 2}") == (
        "servers[0].replicas (entry 'a'): min must not exceed max (got min 3, max 2)")


def test_a_misspelt_policy_key_is_named(tmp_path):
    assert error(tmp_path, "scale_up: {outstanding: 3}") == (
        "servers[0].scale_up (entry 'a'): unknown key 'outstanding' (did you mean 'outstanding_per_replica'?)")


def test_a_negative_idle_timeout_is_refused(tmp_path):
    assert error(tmp_path, "scale_down: {idle_timeout_s: -1}") == (
        "servers[0].scale_down.idle_timeout_s (entry 'a'): Input should be greater than 0 (got -1)")


def test_max_gpus_below_the_minimum_fleet_is_refused(tmp_path):
    assert error(tmp_path, "num_gpus: 2\nreplicas: {min: 2, max: 4}", top="max_gpus: 3\n") == (
        "max_gpus: below the 4 GPUs that the servers' replicas.min need (got 3)")
