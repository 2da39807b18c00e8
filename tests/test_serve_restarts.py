"""How often an engine that died after serving is restarted in place before the job gives up."""

from grace_hpc.serve.restarts import RestartBudget


def test_three_exits_in_ten_minutes_are_restarted_with_growing_pauses_and_the_fourth_is_not():
    budget = RestartBudget(max_restarts=3, window_s=600)
    assert [budget.pause_before_restart(t) for t in (0.0, 60.0, 120.0, 180.0)] == [1.0, 4.0, 16.0, None]


def test_exits_older_than_the_window_are_forgiven():
    budget = RestartBudget(max_restarts=3, window_s=600)
    assert [budget.pause_before_restart(t) for t in (0.0, 700.0, 1400.0, 2100.0)] == [1.0] * 4
