"""handover_lead_s: configured, or measured from the server's own start-ups in its supervisor logs."""

from grace_hpc.config.deployment import ServerSpec
from grace_hpc.fleet.handover import DEFAULT_LEAD_S, MARGIN_S, handover_lead, startup_times, supervisor_logs

LOG = """grace-hpc supervisor: started tiny (llama.cpp) pid 12 on port 4000, log /x/engine.log
grace-hpc supervisor: tiny ready at http://vm:4000/v1 after 41.5s
grace-hpc supervisor: other ready at http://vm:4001/v1 after 99.0s
"""


def server(**kw) -> ServerSpec:
    return ServerSpec.model_validate({"name": "s", "partition": "t4", "models": ["tiny"], **kw})


def test_startup_times_are_read_for_the_servers_models_only():
    assert startup_times(LOG, ["tiny"]) == [41.5]
    assert startup_times(LOG, ["tiny", "other"]) == [41.5, 99.0]


def test_the_lead_is_the_slowest_recent_start_up_plus_a_margin():
    logs = [LOG, LOG.replace("41.5", "70")]
    lead = handover_lead(server(), logs)
    assert lead.seconds == 70 + MARGIN_S
    assert lead.source == "measured from 2 start-up(s), slowest 70s"


def test_a_configured_lead_wins_and_no_log_means_the_default():
    assert handover_lead(server(handover_lead_s=30), [LOG]).seconds == 30
    assert handover_lead(server(), ["no start-up here"]).seconds == DEFAULT_LEAD_S


def test_supervisor_logs_are_found_in_the_submitit_folder(tmp_path):
    for job, text in (("11", "first"), ("12", "second")):
        (tmp_path / "submitit").mkdir(exist_ok=True)
        (tmp_path / "submitit" / f"{job}_0_log.out").write_text(text)
    assert sorted(supervisor_logs(tmp_path)) == ["first", "second"]
