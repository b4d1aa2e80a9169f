"""The engine's tuple events are ordered exactly as SimPy orders Timeouts (time, priority, scheduling order)."""

from __future__ import annotations

import simpy

from servegym.sim.platform import Engine


def _trace(use_tuples: bool) -> list[tuple[float, str]]:
    """Events at tied and distinct times, half SimPy timeouts, half per-request entries (or all timeouts)."""
    env = Engine()
    seen: list[tuple[float, str]] = []

    def request(i: int) -> None:
        seen.append((env.now, f"r{i}"))
        if i < 6:  # an event scheduled from inside a handler, at the same instant (delay 0)
            schedule(0.0, i + 10)

    def schedule(delay: float, i: int) -> None:
        if use_tuples and i % 2 == 0:
            env.after(delay, request, i)
        else:
            env.timeout(delay, i).callbacks.append(lambda event: request(event.value))

    def process() -> simpy.events.ProcessGenerator:
        yield env.timeout(1.0)
        seen.append((env.now, "process"))

    env.process(process())
    for i, delay in enumerate([1.0, 0.5, 1.0, 1.0, 0.0, 2.0, 0.5]):
        schedule(delay, i)
    env.run(until=1.5)
    seen.append((env.now, "paused"))
    env.run()
    return seen


def test_tuple_events_keep_simpys_order() -> None:
    with_tuples, timeouts_only = _trace(True), _trace(False)
    assert with_tuples == timeouts_only
    assert len(with_tuples) == 15 and with_tuples[-2:] == [(2.0, "r5"), (2.0, "r15")]


def test_peek_and_step_see_tuple_events() -> None:
    env = Engine()
    fired: list[int] = []
    env.after(3.0, fired.append, 7)
    assert env.peek() == 3.0
    env.step()
    assert (env.now, fired) == (3.0, [7])
