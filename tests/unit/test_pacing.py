"""The bridge's pacer (bridge/pacing.py): at most N turns per event-loop iteration, the others
in arrival order in the iterations after; a lone caller waits for nothing."""

from __future__ import annotations

import asyncio

import pytest

from stepline_server.bridge.pacing import Pacer


class Iterations:
    """Counts the event loop's iterations: a callback that puts itself back with call_soon
    runs once per iteration."""

    def __init__(self) -> None:
        self.count = 0
        self._handle: asyncio.Handle | None = None

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


def run_burst(callers: int, per_iteration: int) -> list[tuple[int, int]]:
    """`callers` tasks ready in the same iteration each take a turn; (caller, iteration of its
    turn) in the order the turns were given."""
    async def main() -> list[tuple[int, int]]:
        pacer = Pacer(per_iteration)
        iterations = Iterations()
        given: list[tuple[int, int]] = []

        async def caller(i: int) -> None:
            await pacer.turn()
            given.append((i, iterations.count))

        tasks = [asyncio.ensure_future(caller(i)) for i in range(callers)]
        iterations.start()
        await asyncio.gather(*tasks)
        iterations.stop()
        assert pacer.waiting == 0
        return given

    return asyncio.run(main())


def test_a_burst_gets_at_most_n_turns_per_iteration_in_arrival_order() -> None:
    given = run_burst(50, 8)
    assert [i for i, _ in given] == list(range(50))  # first come, first served
    per_iteration: dict[int, int] = {}
    for _, iteration in given:
        per_iteration[iteration] = per_iteration.get(iteration, 0) + 1
    assert max(per_iteration.values()) == 8
    assert len(per_iteration) == 7  # 50 turns, 8 at a time


def test_fewer_callers_than_turns_all_go_in_one_iteration() -> None:
    given = run_burst(5, 8)
    assert len({iteration for _, iteration in given}) == 1


def test_a_lone_caller_does_not_wait() -> None:
    async def main() -> bool:
        pacer = Pacer(1)
        turn = asyncio.ensure_future(pacer.turn())
        await asyncio.sleep(0)  # one iteration: the turn is given in the caller's
        done = turn.done()
        await turn
        return done

    assert asyncio.run(main())


def test_cancelled_waiters_give_up_their_turn() -> None:
    async def main() -> list[int]:
        pacer = Pacer(1)
        given: list[int] = []

        async def caller(i: int) -> None:
            await pacer.turn()
            given.append(i)

        tasks = [asyncio.ensure_future(caller(i)) for i in range(4)]
        await asyncio.sleep(0)  # caller 0 has its turn; 1, 2, 3 wait
        tasks[1].cancel()
        tasks[2].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return given

    assert asyncio.run(main()) == [0, 3]


def test_per_iteration_must_be_positive() -> None:
    with pytest.raises(ValueError, match="per_iteration must be at least 1, not 0"):
        Pacer(0)
