"""Whether the server's calls arrive one at a time, so that a lone ONNX Runtime run may block the event loop.

A run in an executor thread costs two hand-offs (to the thread and back onto the loop, ~0.1 ms each on idle
cores); a run on the loop's own thread costs none: -0.03 to -0.40 ms p50 at concurrency 1 (median -0.19)
beside the same server without it (benchmarks/results/serving_peers.md, runs 76-81). It is how KServe's
fastest set-up runs its model. But while a run blocks the loop the server cannot see other calls arrive: run
on the loop whenever nothing else was in flight (run 76), or by the rule below without its loop turns (run
77), it served them one after another and lost 19-21% of its requests/s at concurrency 16. So a lone run takes
the loop only while calls look sequential: each of the last ``streak`` calls began with no other call in
flight and at least ``min_gap_s`` after the previous one ended. After such a run the loop turns a few times
before its call ends (``inference._call``), so that a call that arrived meanwhile begins
while it is still in flight and resets the streak; a client that sends its next call after reading the answer
needs a network round trip (~0.5 ms for a Python client on loopback) and begins after a gap. A wrong guess
costs one blocked run.

With lone runs scored in parts at once (``OnnxRanker``, ``--split-rows``), the loop's thread taking the first
part answered 0.08-0.18 ms later than all parts in the executor (runs 93-95 in that file), so ``--lone-runs
executor`` is the default and this rule applies with ``--lone-runs loop`` only.
"""

from __future__ import annotations

MIN_GAP_S = 0.0002
STREAK = 2


class SequentialTraffic:
    """Counts calls in flight and how many in a row arrived alone (bookkeeping: callers pass the clock)."""

    def __init__(self, min_gap_s: float = MIN_GAP_S, streak: int = STREAK) -> None:
        self._min_gap_s = min_gap_s
        self._streak = streak
        self._in_flight = 0
        self._alone = 0  # calls in a row that began alone and after a gap
        self._last_end = float("-inf")

    @property
    def sequential(self) -> bool:
        """Whether the calls in flight (this one) arrived one at a time, as the last ``streak`` did."""
        return self._in_flight <= 1 and self._alone >= self._streak

    def begin(self, now: float) -> None:
        """A call began at ``now`` (seconds, any monotonic clock shared with ``end``)."""
        if self._in_flight or now - self._last_end < self._min_gap_s:
            self._alone = 0
        else:
            self._alone += 1
        self._in_flight += 1

    def end(self, now: float) -> None:
        """A call that ``begin`` counted ended at ``now``."""
        self._in_flight -= 1
        self._last_end = now
