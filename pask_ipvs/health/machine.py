"""The health state machine: pure, one per real server, with an injected clock.

Probes say "this probe passed or failed"; this module decides what that means.
A server goes down after ``fall`` consecutive failures and comes back after
``rise`` consecutive successes (keepalived brings a server back on the first
success, which flaps; Seesaw's "retries" only guard the way down). A change
of state is a value (``Transition``) and is produced only on a change, so the
caller writes the kernel only when something really changed.

Start-up does not flap: a server starts *up* (as it is in the kernel after
pask-apply) unless the health file says it was down, in which case it must
pass ``rise`` probes before it gets traffic again.

What the up/down map means for kernel weights (inhibit vs remove, disabled,
backup / sorry servers) is desired.effective_weights: pask-apply and pask-healthd
expand through it, so they always agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Mapping

from ..health_file import health_key

Clock = Callable[[], float]


@dataclass(frozen=True)
class ServerHealth:
    """What is known about one real server. ``since``: epoch of the last change of ``up``."""

    up: bool
    since: float
    detail: str = ""
    successes: int = 0      # consecutive passed probes (counts only while down)
    failures: int = 0       # consecutive failed probes (counts only while up)


@dataclass(frozen=True)
class Transition:
    who: str                # health_key(service, addr, port)
    old: bool               # up before
    new: bool               # up after
    why: str                # "3 consecutive failures (fall 3)"
    detail: str             # the last probe's detail
    at: float               # epoch

    @property
    def old_name(self) -> str:
        return "up" if self.old else "down"

    @property
    def new_name(self) -> str:
        return "up" if self.new else "down"


def initial(previous: Mapping[str, object] | None, now: float) -> ServerHealth:
    """Start-up state: up, unless the health file recorded the server down."""
    if not previous:
        return ServerHealth(True, now)
    since = previous.get("since")
    since = float(since) if isinstance(since, (int, float)) else now
    return ServerHealth(previous.get("up") is not False, since, str(previous.get("detail", "")))


def step(state: ServerHealth, ok: bool, detail: str, rise: int, fall: int,
         now: float, who: str = "") -> tuple[ServerHealth, Transition | None]:
    """Feed one probe result. Returns the new state and the transition, if any."""
    if state.up:
        if ok:
            if not state.failures and state.detail == detail:
                return state, None          # the common case: nothing to record, no allocation
            return replace(state, failures=0, successes=0, detail=detail), None
        failures = state.failures + 1
        if failures < max(1, fall):
            return replace(state, failures=failures, detail=detail), None
        why = f"{failures} consecutive failure{'s' * (failures != 1)} (fall {fall})"
        return (ServerHealth(False, now, detail),
                Transition(who, True, False, why, detail, now))
    if not ok:
        if not state.successes and state.detail == detail:
            return state, None
        return replace(state, successes=0, failures=0, detail=detail), None
    successes = state.successes + 1
    if successes < max(1, rise):
        return replace(state, successes=successes, detail=detail), None
    why = f"{successes} consecutive success{'es' * (successes != 1)} (rise {rise})"
    return (ServerHealth(True, now, detail),
            Transition(who, False, True, why, detail, now))


class HealthMachine:
    """Every tracked server's ``ServerHealth``, keyed by ``health_key``.

    ``previous`` is the health file's ``servers`` object: it decides the initial
    state of servers seen for the first time (at start-up or after a reload).
    """

    def __init__(self, clock: Clock = time.time,
                 previous: Mapping[str, Mapping[str, object]] | None = None):
        self.clock = clock
        self.previous = dict(previous or {})
        self.servers: dict[str, ServerHealth] = {}
        self.limits: dict[str, tuple[int, int]] = {}     # key -> (rise, fall)

    def track(self, key: str, rise: int, fall: int) -> ServerHealth:
        """Start tracking ``key`` (keeping its state if already tracked)."""
        self.limits[key] = (rise, fall)
        if key not in self.servers:
            self.servers[key] = initial(self.previous.get(key), self.clock())
        return self.servers[key]

    def retain(self, keys: Iterable[str]) -> list[str]:
        """Forget every server not in ``keys`` (removed from the config); returns those forgotten."""
        keep = set(keys)
        gone = [k for k in self.servers if k not in keep]
        for k in gone:
            del self.servers[k]
            self.limits.pop(k, None)
            self.previous.pop(k, None)
        return gone

    def record(self, key: str, ok: bool, detail: str) -> Transition | None:
        rise, fall = self.limits[key]
        self.servers[key], transition = step(self.servers[key], ok, detail, rise, fall,
                                             self.clock(), key)
        return transition

    def up_map(self) -> dict[str, bool]:
        return {k: s.up for k, s in self.servers.items()}

    def to_json(self) -> dict:
        """The health file (state.load_health reads ``up``; pask-status shows the rest)."""
        return {"version": 1, "servers": {
            k: {"up": s.up, "since": s.since, "detail": s.detail}
            for k, s in sorted(self.servers.items())}}
