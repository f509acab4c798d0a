"""TimerQueues: the transactions' one-shot timers, one FIFO and one reactor call per delay."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from sipshield.transaction._timers import TimerEntry, TimerQueues


class Owner:
    def __init__(self, name: str, clock: Clock, fired: list[tuple[float, str]], queues: TimerQueues | None = None) -> None:
        self.name = name
        self.clock = clock
        self.fired = fired
        self.queues = queues
        self._timer: TimerEntry | None = None
        self.then: float | None = None  # start another timer of this delay when fired

    def start(self, queues: TimerQueues, delay: float) -> None:
        self._timer = queues.start(delay, self)

    def cancel(self, queues: TimerQueues) -> None:
        timer, self._timer = self._timer, None
        assert timer is not None
        queues.cancel(timer)

    def _fire(self) -> None:
        self._timer = None
        self.fired.append((self.clock.seconds(), self.name))
        if self.then is not None and self.queues is not None:
            delay, self.then = self.then, None
            self.start(self.queues, delay)


def world() -> tuple[Clock, TimerQueues, list[tuple[float, str]]]:
    clock = Clock()
    return clock, TimerQueues(clock), []


def run(clock: Clock, until: float, step: float = 0.25) -> None:
    while clock.seconds() < until:
        clock.advance(step)


def test_timers_of_one_delay_fire_in_order_at_their_own_time_from_one_reactor_call() -> None:
    clock, queues, fired = world()
    a, b, c = (Owner(n, clock, fired) for n in "abc")
    a.start(queues, 2.0)
    clock.advance(0.5)
    b.start(queues, 2.0)
    clock.advance(0.25)
    c.start(queues, 2.0)
    assert len(clock.getDelayedCalls()) == 1 and queues.live() == 3
    run(clock, 5)
    assert fired == [(2.0, "a"), (2.5, "b"), (2.75, "c")]
    assert clock.getDelayedCalls() == [] and queues.live() == 0


def test_delays_have_their_own_queues_and_interleave() -> None:
    clock, queues, fired = world()
    slow, fast = Owner("slow", clock, fired), Owner("fast", clock, fired)
    slow.start(queues, 4.0)
    fast.start(queues, 0.5)
    run(clock, 5)
    assert fired == [(0.5, "fast"), (4.0, "slow")]


def test_a_cancelled_timer_does_not_fire_and_the_last_cancel_frees_the_reactor_call() -> None:
    clock, queues, fired = world()
    a, b = Owner("a", clock, fired), Owner("b", clock, fired)
    a.start(queues, 1.0)
    b.start(queues, 1.0)
    a.cancel(queues)
    assert queues.live() == 1 and len(clock.getDelayedCalls()) == 1
    b.cancel(queues)
    assert queues.live() == 0 and clock.getDelayedCalls() == []
    run(clock, 3)
    assert fired == []


def test_a_timer_restarted_from_its_own_firing_waits_its_whole_delay() -> None:
    clock, queues, fired = world()
    a, b = Owner("a", clock, fired, queues), Owner("b", clock, fired)
    a.then = 4.0
    a.start(queues, 4.0)
    clock.advance(1)
    b.start(queues, 4.0)  # due at 5, before a's restart (due at 8)
    run(clock, 10)
    assert fired == [(4.0, "a"), (5.0, "b"), (8.0, "a")]


def test_a_failing_owner_does_not_hold_back_the_others() -> None:
    clock, queues, fired = world()

    class Broken(Owner):
        def _fire(self) -> None:
            self._timer = None
            raise RuntimeError("bug in a transaction user")

    broken, a = Broken("broken", clock, fired), Owner("a", clock, fired)
    broken.start(queues, 1.0)
    a.start(queues, 1.0)
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        run(clock, 2)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert fired == [(1.0, "a")]
    failures = [event for event in logged if "log_failure" in event]
    assert len(failures) == 1 and failures[0]["log_failure"].check(RuntimeError)
    assert clock.getDelayedCalls() == []


def test_inexact_delays_still_fire_on_time() -> None:
    clock, queues, fired = world()
    owners = [Owner(str(i), clock, fired) for i in range(5)]
    for i, owner in enumerate(owners):
        clock.advance(0.1)
        owner.start(queues, 0.3 * (i % 2 + 1))  # 0.3 and 0.6: not binary fractions
    run(clock, 3, step=0.1)
    assert [name for _, name in fired] == ["0", "2", "1", "4", "3"]
    # never early, and at the first clock step at or after the due time
    assert all(due - 1e-6 <= when < due + 0.1 + 1e-6 for (when, _), due in zip(fired, [0.4, 0.6, 0.8, 0.8, 1.0], strict=True))
    assert clock.getDelayedCalls() == []


def test_stop_forgets_every_timer() -> None:
    clock, queues, fired = world()
    Owner("a", clock, fired).start(queues, 1.0)
    Owner("b", clock, fired).start(queues, 2.0)
    queues.stop()
    assert clock.getDelayedCalls() == [] and queues.live() == 0
    run(clock, 3)
    assert fired == []
