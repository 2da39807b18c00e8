"""When a READY engine counts as hung: silent on /health for the whole window, not after one slow answer."""

from grace_hpc.serve.liveness import Liveness


def test_one_missed_answer_under_load_is_not_a_verdict():
    watch = Liveness(unresponsive_after_s=15, last_answer=0.0)
    assert watch.observe(False, now=5.0) is None
    assert watch.observe(True, now=8.0) is None
    assert watch.observe(False, now=20.0) is None  # 12 s since the last answer
    assert not watch.silent


def test_silence_for_the_whole_window_takes_it_out_once_and_an_answer_puts_it_back_once():
    watch = Liveness(unresponsive_after_s=15, last_answer=0.0)
    assert [watch.observe(False, now=t) for t in (5.0, 10.0, 15.0, 20.0)] == [None, None, True, None]
    assert watch.silent
    assert watch.observe(True, now=25.0) is False
    assert watch.observe(True, now=30.0) is None and not watch.silent
