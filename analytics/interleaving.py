"""Credit assignment of interleaving experiments: raw events in, per-user preferences out (reference code).

This is the specification, in plain Python, that the warehouse aggregation of interleaving experiments must
reproduce row for row (the SQL is checked against ``user_preferences``). Rules:

1. An interleaved request is an exposure of schema version 2: ``item_ids`` in shown order and ``teams``
   (0 = the experiment's first arm, A; 1 = its second, B), one per item, no item twice. A retried request
   logs the same list again (the coin is seeded by the user and request ids), so exposures count once per
   (user, request id): the first by (event time, event id).
2. A click counts when its request id is one of the user's interleaved requests and its item id is in that
   request's list; it is credited to the team of that item at that request. Each (request, item) counts at
   most once, so a double-click (two events) is one credit. Clicks on items or requests the user was not
   shown interleaved are not credited, nor click outcomes that name no item (``Outcome.item_id`` unset; item 0
   is an item): they are no ``Click``.
3. A user's credits c_A, c_B sum over all their interleaved requests. Every user with an interleaved exposure
   counts in n, with or without clicks; the statistics (``analytics.stats.interleaving``) take it from there.
4. As of a time c (the report's timeline), the same rules apply to the exposures and clicks at or before c.
5. In an analysis window [start, end) (``analytics.analysis_window``), the same rules apply to the users whose
   first interleaved exposure, ever, is at or after the start, and to their exposures and clicks before the end
   (``in_window``): a user first shown a list before the start is out even when shown more inside.
6. The arm pairs an experiment reports (``arm_pairs``) are those its interleaved exposure events named, each
   copy of an event at its own time: per pair, the distinct event ids, the first and the last time. In a
   window, only the exposures rule 5 keeps count, so the pairs (and the arms the report names A and B) are
   those of the users and lists it analyses.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass
from typing import Protocol, TypeVar

from analytics.analysis_window import ALL_TIME, AnalysisWindow
from analytics.stats.models.statistics import PreferenceCounts


@dataclass(frozen=True)
class InterleavedExposure:
    """One interleaved request as the exposure logged it."""

    user_id: str
    request_id: str
    item_ids: Sequence[int]
    teams: Sequence[int]
    event_time_ms: int = 0
    event_id: str = ""


@dataclass(frozen=True)
class Click:
    """One click outcome: the request it follows from and the item clicked."""

    user_id: str
    request_id: str
    item_id: int
    event_time_ms: int = 0


@dataclass(frozen=True)
class Arm:
    """One arm of an interleaving experiment as its exposures name it."""

    key: str
    model_name: str
    model_version: str


@dataclass(frozen=True)
class ArmsSeen:
    """A pair of arms (A: the experiment's first, B: its second) and the interleaved exposures that named it.

    An experiment whose config changed an arm's model while it ran has several pairs.
    """

    a: Arm
    b: Arm
    exposures: int
    first_ms: int
    last_ms: int


@dataclass(frozen=True)
class ShownArms:
    """The arm pair one interleaved exposure event named (a redelivered copy at another time: one more)."""

    a: Arm
    b: Arm
    user_id: str
    event_id: str
    event_time_ms: int


@dataclass(frozen=True)
class UserPreference:
    """Clicks credited to each arm for one user."""

    user_id: str
    credit_a: int
    credit_b: int

    @property
    def outcome(self) -> int:
        """1: prefers B, -1: prefers A, 0: tie (or no click; see ``clicked``)."""
        return (self.credit_b > self.credit_a) - (self.credit_a > self.credit_b)

    @property
    def clicked(self) -> bool:
        return self.credit_a + self.credit_b > 0


def user_preferences(
    exposures: Iterable[InterleavedExposure], clicks: Iterable[Click]
) -> list[UserPreference]:
    """Per-user credits of one interleaving experiment, sorted by user id (see the module's rules).

    Raises:
        ValueError: an exposure whose teams do not match its items one to one, name an arm other than 0/1, or
            whose items repeat (the merge never repeats one).
    """
    firsts: dict[tuple[str, str], InterleavedExposure] = {}
    for exposure in exposures:
        if len(exposure.teams) != len(exposure.item_ids) or any(t not in (0, 1) for t in exposure.teams):
            raise ValueError(f"exposure {exposure.request_id!r}: teams must be 0/1, one per item")
        if len(set(exposure.item_ids)) != len(exposure.item_ids):
            raise ValueError(f"exposure {exposure.request_id!r}: an item appears twice in the list")
        key = (exposure.user_id, exposure.request_id)
        kept = firsts.get(key)
        if kept is None or (exposure.event_time_ms, exposure.event_id) < (kept.event_time_ms, kept.event_id):
            firsts[key] = exposure
    team_of = {
        key: dict(zip(exposure.item_ids, exposure.teams, strict=True)) for key, exposure in firsts.items()
    }
    credits = {user: [0, 0] for user, _ in firsts}
    credited: set[tuple[str, str, int]] = set()
    for click in clicks:
        key = (click.user_id, click.request_id)
        team = team_of.get(key, {}).get(click.item_id)
        if team is None or (*key, click.item_id) in credited:
            continue
        credited.add((*key, click.item_id))
        credits[click.user_id][team] += 1
    return [UserPreference(user, a, b) for user, (a, b) in sorted(credits.items())]


def preference_counts(preferences: Iterable[UserPreference]) -> PreferenceCounts:
    """The sufficient statistics of per-user preferences (what the warehouse query returns)."""
    n = wins_a = wins_b = ties = 0
    total = squares = 0.0
    for p in preferences:
        n += 1
        wins_b += p.outcome > 0
        wins_a += p.outcome < 0
        ties += p.outcome == 0 and p.clicked
        diff = p.credit_b - p.credit_a
        total += diff
        squares += diff * diff
    return PreferenceCounts(n, wins_a, wins_b, ties, total, squares)


def preference_counts_at(
    exposures: Iterable[InterleavedExposure], clicks: Iterable[Click], cuts: Sequence[int | None]
) -> list[PreferenceCounts]:
    """``preference_counts`` as of each cut (rule 4): over the exposures and clicks at or before it (None: all)."""
    exposures, clicks = list(exposures), list(clicks)
    out = []
    for cut in cuts:
        until = float("inf") if cut is None else cut
        shown = [e for e in exposures if e.event_time_ms <= until]
        clicked = [c for c in clicks if c.event_time_ms <= until]
        out.append(preference_counts(user_preferences(shown, clicked)))
    return out


class _UserEvent(Protocol):
    @property
    def user_id(self) -> str: ...

    @property
    def event_time_ms(self) -> int: ...


_Shown = TypeVar("_Shown", bound=_UserEvent)


def _kept(exposures: Iterable[_Shown], window: AnalysisWindow) -> list[_Shown]:
    """The exposures rule 5 keeps: before the end, of the users whose first exposure among them is admitted
    (one rule for the credit and the arm pairs)."""
    exposures = list(exposures)
    first: dict[str, int] = {}
    for e in exposures:
        first[e.user_id] = min(e.event_time_ms, first.get(e.user_id, e.event_time_ms))
    return [e for e in exposures if window.admits(first[e.user_id]) and window.before_end(e.event_time_ms)]


def in_window(
    exposures: Iterable[InterleavedExposure], clicks: Iterable[Click], window: AnalysisWindow
) -> tuple[list[InterleavedExposure], list[Click]]:
    """The exposures and clicks that rule 5 keeps in ``window``."""
    return _kept(exposures, window), [c for c in clicks if window.before_end(c.event_time_ms)]


def arm_pairs(shown: Iterable[ShownArms], window: AnalysisWindow = ALL_TIME) -> list[ArmsSeen]:
    """The arm pairs of one experiment's exposures ``shown`` in ``window`` (rule 6), most exposures first,
    then by first time and by arms (the order of ``interleaving_sql.arms_query``); ``[0]`` names A and B."""
    pairs: dict[tuple[Arm, Arm], list[ShownArms]] = defaultdict(list)
    for s in _kept(shown, window):
        pairs[(s.a, s.b)].append(s)
    seen = []
    for (a, b), group in pairs.items():
        times = [s.event_time_ms for s in group]
        seen.append(ArmsSeen(a, b, len({s.event_id for s in group}), min(times), max(times)))
    return sorted(seen, key=lambda s: (-s.exposures, s.first_ms, astuple(s.a), astuple(s.b)))
