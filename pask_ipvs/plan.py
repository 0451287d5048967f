"""plan = diff(desired, observed): a pure, ordered list of typed Ops.

IPVS has no transactions, so order is the safety mechanism: everything new is
added before anything old is removed, and the nft table (which steers marked
traffic) is swapped between the two. Only objects pask owns are ever changed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Iterable, NamedTuple

from .objects import DestKey, Desired, NftTable, Observed
from .state import PaskState

ADD, SET, DELETE, REPLACE = "add", "set", "delete", "replace"
REORDER = "mh order"     # the reason of ops that put an mh service's dests in canonical order
IPVS_KINDS = ("service", "dest")        # op kinds the IPVS backend runs
SYMBOLS = {ADD: "+", SET: "~", DELETE: "-", REPLACE: "±"}

# Execution order: (kind, action). New things first, old things last.
PHASES: tuple[tuple[str, str], ...] = (
    ("module", ADD),          # a kernel module (helpers, ipip), before what needs it
    ("module", SET),          # reloaded with more parameter values (ip_vs_ftp ports)
    ("sysctl", SET),
    ("link", ADD),
    ("link", SET),
    ("address", ADD),
    ("service", ADD),
    ("service", SET),
    ("dest", ADD),
    ("dest", SET),
    ("nft", REPLACE),
    ("sync", DELETE),         # IPVS keeps one sync thread per state: a changed one goes first
    ("sync", ADD),
    ("engine", ADD),          # ha: conntrackd, then keepalived (whose addresses need the rest)
    ("engine", SET),          # its rendered files changed: reload (keepalived) or restart
    ("dest", DELETE),
    ("service", DELETE),
    ("nft", DELETE),
    ("engine", DELETE),       # ha: gone from the config (its VIPs were put on vip_interface above)
    ("address", DELETE),
)
_PHASE_INDEX = {p: i for i, p in enumerate(PHASES)}
_ACTION = attrgetter("action")


class Op(NamedTuple):
    """One kernel change. ``before``/``after`` are kernel value types (or text for sysctls).

    A NamedTuple, like the kernel value types (objects.py): a cold plan at 1024 x 32 makes
    34k of them, and a tuple is built in C (2.4x faster than a frozen dataclass). Change a
    field with ``_replace``."""

    action: str
    kind: str
    label: str                 # what the op is about, as the plan shows it ("tcp 10.99.0.1:80")
    before: object = None
    after: object = None
    reason: str = ""           # "" (config), "drift", "drain", "health", "rollback"
    service: str = ""          # the config's service name, for display

    @property
    def symbol(self) -> str:
        return SYMBOLS[self.action]

    @property
    def phase(self) -> int:
        if self.reason == REORDER:    # a re-add's delete runs among the adds, in its turn
            return _PHASE_INDEX[(self.kind, ADD)]
        return _PHASE_INDEX[(self.kind, self.action)]

    def inverse(self) -> "Op | None":
        """The op that undoes this one, for rolling back a failed apply (None: cannot)."""
        if self.action == ADD:
            return self._replace(action=DELETE, before=self.after, after=None, reason="rollback")
        if self.action == DELETE:
            return self._replace(action=ADD, before=None, after=self.before, reason="rollback")
        if self.action == SET and self.kind != "engine":
            return self._replace(before=self.after, after=self.before, reason="rollback")
        # an nft replace is atomic on its own, the old table is not kept; an engine that
        # re-read its files is left so (its old files are not kept either)
        return None


@dataclass(frozen=True)
class Plan:
    ops: tuple[Op, ...] = ()
    # Dests being drained (weight 0, waiting for connections to end): key -> since (epoch s).
    draining: dict = field(default_factory=dict, compare=False)

    @property
    def changed(self) -> bool:
        return bool(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self):
        return iter(self.ops)

    def counts(self) -> dict[str, int]:
        out = {ADD: 0, SET: 0, DELETE: 0, REPLACE: 0}
        out.update(Counter(map(_ACTION, self.ops)))     # counted in C: a cold plan has 34k ops
        return out


@dataclass(frozen=True)
class PlanSummary(Plan):
    """What a run reports of a big plan once it ran (its size, its counts, what drains),
    without its ops: pask-apply lets 34k of them go before verify (pipeline.reconcile's
    ``lean_above``). Iterating it gives nothing: only a plan small enough to be shown
    is kept whole."""

    size: int = 0
    tally: dict = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, plan: Plan) -> "PlanSummary":
        return cls((), plan.draining, size=len(plan.ops), tally=plan.counts())

    @property
    def changed(self) -> bool:
        return self.size > 0

    def __len__(self) -> int:
        return self.size

    def counts(self) -> dict[str, int]:
        return dict(self.tally)


def ordered(ops: Iterable[Op]) -> tuple[Op, ...]:
    # sort is stable: within a phase, ops keep the order they were produced in
    return tuple(sorted(ops, key=_PHASE))


_PHASE = attrgetter("phase")      # Op.phase: a re-add's delete (REORDER) among the adds


def diff(desired: Desired, observed: Observed, state: PaskState | None = None,
         *, now: float = 0.0, drain_timeout: int = 0) -> Plan:
    """The ops that turn ``observed`` into ``desired``, touching only pask's objects.

    Owned services are those the config declares plus those the state file
    records (declared by an earlier run); every other IPVS service is foreign.
    """
    state = state or PaskState()
    names = {key: name for name, key in state.services.items()}
    names.update(desired.owners)
    ops: list[Op] = []
    draining: dict[DestKey, float] = {}

    ops.extend(module_ops(desired, observed))
    for key, value in desired.sysctls.items():
        if observed.sysctls.get(key) != value:
            ops.append(Op(SET, "sysctl", key, observed.sysctls.get(key), value))

    if desired.vip_interface:
        if observed.link is None:
            ops.append(Op(ADD, "link", desired.vip_interface, None, desired.vip_interface))
        elif not observed.link.up and observed.link.kind == "dummy":
            # pask's dummy link, down: its VIPs are not local addresses, IPVS sees nothing
            ops.append(Op(SET, "link", desired.vip_interface, "down", "up"))
        for vip in sorted(desired.vips - observed.vips):
            ops.append(Op(ADD, "address", str(vip), None, vip))
        # The VIP interface is pask's own: an address there that no service uses leaves it.
        for vip in sorted(observed.vips - desired.vips):
            if vip.interface == desired.vip_interface:
                ops.append(Op(DELETE, "address", str(vip), vip, None))
    else:
        # vip_interface: null -> VIPs are managed elsewhere; only take back what pask added.
        for vip in sorted(observed.vips & frozenset(state.vips)):
            ops.append(Op(DELETE, "address", str(vip), vip, None))

    ipvs = observed.ipvs
    for key, svc in desired.services.items():
        have = ipvs.services.get(key)
        if have is None:
            ops.append(Op(ADD, "service", str(key), None, svc, "", names[key]))
        elif have != svc:
            ops.append(Op(SET, "service", str(key), have, svc, "", names[key]))
    have_dests = ipvs.dests
    label = _DestLabels()
    for dkey, dest in desired.dests.items():
        have = have_dests.get(dkey)
        if have is None:
            ops.append(Op(ADD, "dest", label(dkey), None, dest, "", names[dkey.service]))
        elif have != dest:
            ops.append(Op(SET, "dest", label(dkey), have, dest, "", names[dkey.service]))

    for dkey, have in ipvs.dests.items():
        # Dests of a service that goes away entirely go with it (below).
        if dkey.service not in desired.services or dkey in desired.dests:
            continue
        name = names[dkey.service]
        if drain_timeout > 0:
            since = state.draining.get(dkey, now)
            conns = ipvs.dest_stats.get(dkey)
            if conns is not None and conns.connections > 0 and now - since < drain_timeout:
                draining[dkey] = since
                if have.weight != 0:
                    ops.append(Op(SET, "dest", dest_label(dkey), have, have._replace(weight=0),
                                  "drain", service=name))
                continue
        ops.append(Op(DELETE, "dest", dest_label(dkey), have, None, service=name))

    for key in sorted(set(state.services.values()) - set(desired.services)):
        have = ipvs.services.get(key)
        if have is not None:
            ops.append(Op(DELETE, "service", str(key), have, None, service=names[key]))

    if desired.canonical_dests:
        ops = canonical_dest_ops(ops, desired, observed)
    ops.extend(_nft_ops(desired.nft, observed, state))
    ops.extend(sync_ops(desired, observed))
    ops.extend(engine_ops(desired, observed))
    return Plan(ordered(ops), draining)


def canonical_dest_ops(ops: list[Op], desired: Desired, observed: Observed) -> list[Op]:
    """The dest adds of services whose kernel list must be in canonical order (mh behind
    bgp: mh_order.py), in that order, with the re-adds that put misplaced dests back.
    Each dest goes in at its table weight (the kernel builds the mh table from the last
    non-zero weight), then down to a weight of 0 if it must be (down, disabled, backup)."""
    from .mh_order import insertions

    kernel_order: dict = {}
    for dkey in observed.ipvs.dests:            # the kernel's list order, head first
        kernel_order.setdefault(dkey.service, []).append(dkey)
    out: list[Op] = []
    moved: set[DestKey] = set()
    for key, table in desired.canonical_dests.items():
        if key not in desired.services:
            continue
        weights = dict(table)
        name = desired.owners.get(key, "")
        for dkey in insertions([k for k, _ in table], kernel_order.get(key, ())):
            moved.add(dkey)
            want = desired.dests[dkey]
            have = observed.ipvs.dests.get(dkey)
            slots = want._replace(weight=weights[dkey] or want.weight)
            if have is not None:
                out.append(Op(DELETE, "dest", dest_label(dkey), have, None, REORDER, name))
            out.append(Op(ADD, "dest", dest_label(dkey), None, slots,
                          REORDER if have is not None else "", name))
            if slots != want:
                out.append(Op(SET, "dest", dest_label(dkey), slots, want, "mh slots", name))
    kept = [op for op in ops if not (op.kind == "dest" and op.action in (ADD, SET)
                                     and (op.after.key in moved))]
    return kept + out


def sync_ops(desired: Desired, observed: Observed) -> list[Op]:
    """Start the sync threads the config wants. The kernel runs one per state, so with
    ha: pask owns both states: a thread of another interface or sync id is replaced. A
    thread an earlier run started for a config that no longer has it is stopped."""
    ops: list[Op] = []
    states = {d.state for d in desired.sync_daemons}
    for have in sorted(observed.sync_daemons - desired.sync_daemons):
        if have.state in states or have in desired.retired_sync:
            ops.append(Op(DELETE, "sync", have.state, have, None))
    for want in sorted(desired.sync_daemons - observed.sync_daemons):
        ops.append(Op(ADD, "sync", want.state, None, want))
    return ops


def engine_ops(desired: Desired, observed: Observed) -> list[Op]:
    """Start an engine that is not running; reload one whose files differ from what is on
    disk (a reload never moves the addresses: keepalived keeps its state on SIGHUP).
    Stop one an earlier run started that the config no longer has."""
    ops: list[Op] = []
    for name, want in desired.engines.items():
        have = observed.engines.get(name)
        if have is None or not have.running:
            ops.append(Op(ADD, "engine", name, have, want))
        elif have.files != want.files:
            ops.append(Op(SET, "engine", name, have, want, "config changed"))
    for name, old in desired.retired_engines.items():
        have = observed.engines.get(name)
        if name not in desired.engines and have is not None and have.running:
            ops.append(Op(DELETE, "engine", name, old, None))
    return ops


def module_ops(desired: Desired, observed: Observed) -> list[Op]:
    """Load what is missing; reload a module whose load-time parameters lack a value the
    config needs (with the values it had kept). pask never unloads a module: others
    may use it, and it does nothing without the services that need it."""
    ops: list[Op] = []
    for name, want in desired.modules.items():
        have = observed.modules.get(name)
        if have is None:
            ops.append(Op(ADD, "module", name, None, want))
        elif not have.covers(want):
            ops.append(Op(SET, "module", name, have, have.merged(want), "reload"))
    return ops


def _nft_ops(want: NftTable | None, observed: Observed, state: PaskState) -> list[Op]:
    have = observed.nft
    label = "table inet pask"
    if want is None:
        return [Op(DELETE, "nft", label, have, None)] if have is not None else []
    if have is None:
        return [Op(REPLACE, "nft", label, None, want)]
    if have.comment != want.digest:
        return [Op(REPLACE, "nft", label, have, want)]
    if state.nft_listing_digest and have.listing_digest != state.nft_listing_digest:
        return [Op(REPLACE, "nft", label, have, want, "drift")]
    return []


def dest_label(dkey: DestKey) -> str:
    return f"{dkey.service} -> {dkey}"


class _DestLabels:
    """dest_label, with each service's text made once (a cold plan labels 32 dests of
    each service; ServiceKey.__str__ is a Python call)."""

    def __init__(self) -> None:
        self._key: object = None
        self._text = ""

    def __call__(self, dkey: DestKey) -> str:
        key = dkey.service
        if key is not self._key:
            self._key, self._text = key, f"{key} -> "
        addr = dkey.addr
        return f"{self._text}[{addr}]:{dkey.port}" if ":" in addr else f"{self._text}{addr}:{dkey.port}"


def diff_dests(desired: Desired, observed: Observed, services: Iterable) -> Plan:
    """Dest ops for a few services only: the health daemon's cheap path.

    It compares just those services' destinations (add / set / delete), so a
    health transition costs one kernel write, not a full reconcile.
    """
    keys = set(services)
    ops: list[Op] = []
    for dkey, dest in desired.dests.items():
        if dkey.service not in keys:
            continue
        have = observed.ipvs.dests.get(dkey)
        if have is None:
            ops.append(Op(ADD, "dest", dest_label(dkey), None, dest, "health",
                          desired.owners.get(dkey.service, "")))
        elif have != dest:
            ops.append(Op(SET, "dest", dest_label(dkey), have, dest, "health",
                          desired.owners.get(dkey.service, "")))
    for dkey, have in observed.ipvs.dests.items():
        if dkey.service in keys and dkey not in desired.dests:
            ops.append(Op(DELETE, "dest", dest_label(dkey), have, None, "health",
                          desired.owners.get(dkey.service, "")))
    return Plan(ordered(ops))
