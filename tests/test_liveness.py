"""The watchdog's judgement, driven by a fake clock one step at a time."""

from __future__ import annotations

import threading

from daemon.liveness import LOOP_ALLOWANCE, Liveness


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_idle_and_ticking_is_alive() -> None:
    clock = Clock()
    live = Liveness(stall_seconds=10, load_seconds=60, clock=clock)
    clock.now += 5
    live.loop_tick()
    assert live.verdict().alive


def test_a_stuck_main_loop_is_not() -> None:
    clock = Clock()
    live = Liveness(10, 60, clock=clock)
    clock.now += LOOP_ALLOWANCE + 1
    verdict = live.verdict()
    assert not verdict.alive and "main loop" in verdict.reason


def test_a_job_gets_the_load_allowance_before_its_first_step_then_the_stall_allowance() -> None:
    clock = Clock()
    live = Liveness(stall_seconds=10, load_seconds=60, clock=clock)
    live.job_started(7)
    for _ in range(5):  # 50 s without a step: a model may be loading
        clock.now += 10
        live.loop_tick()
    assert live.verdict().alive
    live.step(7)
    clock.now += 9
    live.loop_tick()
    assert live.verdict().alive
    clock.now += 2  # 11 s since the last step
    live.loop_tick()
    verdict = live.verdict()
    assert not verdict.alive and "job 7" in verdict.reason and "last step" in verdict.reason
    live.step(7)  # it recovered
    assert live.verdict().alive
    live.job_ended(7)
    clock.now += 100
    live.loop_tick()
    assert live.verdict().alive  # idle is fine


def test_a_job_that_never_steps_is_hung_after_the_load_allowance() -> None:
    clock = Clock()
    live = Liveness(stall_seconds=10, load_seconds=60, clock=clock)
    live.job_started(3)
    live.step(2)  # another job's late step does not count
    clock.now += 61
    live.loop_tick()
    verdict = live.verdict()
    assert not verdict.alive and verdict.reason == (
        "job 3 has made no progress for 61s since it started (no first step)"
    )


def test_a_model_load_gets_the_load_allowance_from_when_it_began() -> None:
    clock = Clock()
    live = Liveness(stall_seconds=10, load_seconds=60, clock=clock)
    live.job_started(4)
    clock.now += 50  # reading a large image from a slow share
    live.loading(4)
    clock.now += 55  # 105 s since the claim, 55 s into the load
    live.loop_tick()
    assert live.verdict().alive
    clock.now += 6
    live.loop_tick()
    verdict = live.verdict()
    # The 61 s count from the load's start, and the reason says so.
    assert not verdict.alive and verdict.reason == (
        "job 4 has made no progress for 61s since its model began loading (no first step)"
    )
    live.loading(9)  # a job that is not running (ended meanwhile) is not brought back
    live.job_ended(4)
    assert live.verdict().alive


def test_each_of_several_jobs_is_judged_on_its_own() -> None:
    clock = Clock()
    live = Liveness(stall_seconds=10, load_seconds=60, clock=clock)
    live.job_started(1)
    live.job_started(2)
    live.step(1)
    live.step(2)
    for _ in range(3):
        clock.now += 5
        live.step(1)  # job 1 keeps going, job 2 is stuck
        live.loop_tick()
    verdict = live.verdict()
    assert not verdict.alive and "job 2" in verdict.reason


def test_a_dead_worker_thread_is_not_alive() -> None:
    live = Liveness(10, 60)
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    live.workers = [thread]
    verdict = live.verdict()
    assert not verdict.alive and "worker thread has died" in verdict.reason
