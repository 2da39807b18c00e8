"""The vLLM version input: parsing, the series a logged release falls under, and the job's real version."""

from __future__ import annotations

import pytest

from grace_hpc.errors import PlanError
from grace_hpc.vllm_version import DEFAULT_VLLM_VERSION, VllmVersion, logged_release, version_mismatch


def test_a_release_names_its_series_and_the_default_is_the_newest() -> None:
    assert VllmVersion.parse("0.19.1") is VllmVersion.V0_19
    assert VllmVersion.parse("v0.11.2") is VllmVersion.V0_11
    assert VllmVersion.parse("0.33") is VllmVersion.V0_33
    assert DEFAULT_VLLM_VERSION is VllmVersion.V0_33
    with pytest.raises(PlanError, match="unsupported vLLM version '0.21.0'; supported: 0.11.x, 0.19.x, 0.33.x"):
        VllmVersion.parse("0.21.0")


def test_a_logged_release_is_compared_under_the_newest_series_not_newer() -> None:
    assert VllmVersion.covering("0.14.1") is VllmVersion.V0_11
    assert VllmVersion.covering("0.19.0") is VllmVersion.V0_19
    assert VllmVersion.covering("0.27.1") is VllmVersion.V0_19
    assert VllmVersion.covering("0.9.x") is VllmVersion.V0_11  # older than every series: the oldest rules


# the three ways a vLLM server names its release at startup (0.11 api_server.py; 0.19 entrypoints/utils.py,
# plain and logo; the logo line as published with vLLM 0.19.0, https://myoceane.fr/index.php/ai-vllm-a100-gemma-4/)
LOG_011 = "INFO 10-31 15:07:20 [api_server.py:1839] vLLM API server version 0.11.0"
LOG_019_PLAIN = "INFO 04-18 20:22:57 [utils.py:299] vLLM server version 0.19.1, serving model openai/gpt-oss-20b"
LOG_019_LOGO = ("(APIServer pid=6539) INFO 04-18 20:22:57 [utils.py:299] \u2584\u2584 \u2584\u2588 \u2588     \u2588"
                "     \u2588 \u2580\u2584\u2580 \u2588  version \x1b[97;1m0.19.0\x1b[0m")


def test_the_job_s_real_version_is_read_from_its_startup_log() -> None:
    assert logged_release(LOG_011) == "0.11.0"
    assert logged_release(LOG_019_PLAIN) == "0.19.1"
    assert logged_release(LOG_019_LOGO) == "0.19.0"
    assert logged_release("INFO nothing here") is None


def test_a_mismatch_between_the_plan_and_the_job_is_a_warning() -> None:
    assert version_mismatch(VllmVersion.V0_19, LOG_019_PLAIN) is None
    assert version_mismatch(VllmVersion.V0_19, "no banner") is None
    warning = version_mismatch(VllmVersion.V0_33, LOG_011)
    assert warning and "runs vLLM 0.11.0 but the plan targeted 0.33" in warning and 'vllm_version: "0.11"' in warning
    unknown = version_mismatch(VllmVersion.V0_33, "vLLM API server version 0.21.0")
    assert unknown and "no rules for" in unknown


def test_a_requeued_job_s_log_is_judged_by_its_last_start() -> None:
    assert logged_release(LOG_011 + "\n...\n" + LOG_019_PLAIN) == "0.19.1"


def test_launch_plans_with_cluster_yaml_s_version_and_hands_it_to_the_job() -> None:
    # the job's supervisor compares it with the real `vllm` (version_mismatch on the engine log at readiness)
    from grace_hpc.config.cluster import Cluster
    from grace_hpc.config.deployment import Deployment
    from grace_hpc.config.loader import PROJECT_ROOT, ConfigDir
    from grace_hpc.launch.launcher import plan_deployment
    from grace_hpc.launch.specs import model_launches

    catalog = ConfigDir(PROJECT_ROOT / "configs").catalog()
    cluster = Cluster.model_validate({"partitions": [{"name": "t4", "gpu": "T4", "gpus_per_node": 1}],
                                      "engines": {"vllm_version": "0.11.2"}})
    deployment = Deployment.model_validate({"name": "d", "servers": [
        {"name": "s", "partition": "t4", "models": ["llama-3.2-1b-instruct"], "max_model_len": 4096}]})
    [planned] = plan_deployment(cluster, catalog, deployment)
    [launch] = model_launches(planned.server, planned.plan, catalog, cluster)
    assert planned.plan.plans[0].vllm_version == "0.11" and launch.vllm_version == "0.11"
