"""The imperative shell: observe -> preflight -> execute -> observe again -> verify.

IPVS has no transactions, so "nothing half applied" comes from three things:
everything that can be checked is checked before the first change (config,
scheduler modules, the nft table as a libnftables dry run); ops run in the
safe order plan.PHASES gives them; and when a step still fails, the ops that
already ran are undone in reverse.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from .backend.base import BackendError, Backends
from .kernel import Desired, IpvsObserved, NftObserved, Observed, ServiceKey
from .plan import REPLACE, Op, Plan, diff
from .state import PaskState

IPVS_KINDS = ("service", "dest")
# verify re-reads the IPVS services an apply touched, unless they are more than this
# share of the table (a cold apply, a big change): then one whole-table read is cheaper.
VERIFY_PARTIAL_MAX_FRACTION = 0.25
Progress = Callable[[str], None]


def observe(desired: Desired, backends: Backends, *, stats: bool = False) -> Observed:
    """Read what the kernel holds of everything ``desired`` speaks about.

    IPVS is read first: the generic-netlink lookup loads ip_vs, which creates
    the net.ipv4.vs.* sysctls read after it.
    """
    return _observe_rest(desired, backends, backends.ipvs.observe(stats=stats))


def _observe_rest(desired: Desired, backends: Backends, ipvs: IpvsObserved) -> Observed:
    """Everything but IPVS (cheap: one nft listing, one interface, a few sysctls)."""
    nft = backends.nft.observe()
    link, vips = (None, frozenset())
    if desired.vip_interface:
        link, vips = backends.addr.observe(desired.vip_interface)
    sysctls = backends.sysctl.read(desired.sysctls.keys())
    return Observed(ipvs=ipvs, nft=nft, link=link, vips=vips, sysctls=sysctls)


def touched_services(ops: Iterable[Op]) -> set[ServiceKey]:
    """The IPVS services ``ops`` write to: a service op's own key, a dest op's service."""
    keys: set[ServiceKey] = set()
    for op in ops:
        if op.kind not in IPVS_KINDS:
            continue
        value = op.after if op.after is not None else op.before
        keys.add(value.key if op.kind == "service" else value.service)   # type: ignore[union-attr]
    return keys


def observe_after(desired: Desired, backends: Backends, before: Observed, ops: Iterable[Op], *,
                  stats: bool = False, also: Iterable[ServiceKey] = (),
                  max_fraction: float = VERIFY_PARTIAL_MAX_FRACTION) -> Observed:
    """What ``observe`` would read after ``ops`` ran on a kernel observed as ``before``,
    at the cost of what the ops touched.

    IPVS: ``before`` with the services the ops touched (and ``also``) read again
    through ``observe_services``; a service gone from the kernel drops out with its
    dests. When those are more than ``max_fraction`` of the services in ``before``
    (a cold apply), one whole-table read is cheaper and is done instead. Everything
    else is read whole, as ``observe`` does. Same result as ``observe`` as long as
    nobody else changed the untouched services meanwhile (their counters are
    ``before``'s; ``also`` names the services whose counters matter, e.g. draining)."""
    keys = touched_services(ops) | set(also)
    if len(keys) > max_fraction * len(before.ipvs.services):
        ipvs = backends.ipvs.observe(stats=stats)
    elif keys:
        fresh = backends.ipvs.observe_services(sorted(keys), stats=stats)
        ipvs = before.ipvs.replaced(fresh, keys)
    else:                       # only nft, addresses or sysctls changed: IPVS is as it was
        ipvs = before.ipvs.replaced(IpvsObserved(), keys)
    return _observe_rest(desired, backends, ipvs)


def preflight(desired: Desired, backends: Backends) -> list[str]:
    """Problems that would make the apply fail half-way; checked before any change."""
    problems: list[str] = []
    missing = backends.ipvs.missing_schedulers(sorted(desired.schedulers))
    for sched, module in sorted(missing.items()):
        owners = sorted(name for key, name in desired.owners.items()
                        if desired.services[key].scheduler == sched)
        problems.append(
            f"scheduler {sched!r} (services: {', '.join(owners)}) needs kernel module "
            f"{module}, which this kernel does not have")
    if desired.nft is not None:
        try:
            backends.nft.check(desired.nft)
        except BackendError as e:
            problems.append(f"nftables refused table inet pask: {e}")
    for key in desired.sysctls:
        if key.startswith("net.ipv4.vs.") and key not in backends.sysctl.read([key]):
            problems.append(f"sysctl {key} does not exist: is the ip_vs module loaded?")
    return problems


@dataclass
class ApplyResult:
    applied: list[Op] = field(default_factory=list)
    errors: list[BackendError] = field(default_factory=list)
    rolled_back: list[Op] = field(default_factory=list)
    rollback_errors: list[BackendError] = field(default_factory=list)
    nft: NftObserved | None = None          # the table as replaced (for the state file)
    nft_touched: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors


def _groups(ops: Sequence[Op]) -> list[list[Op]]:
    """Consecutive ops for the same backend, so IPVS ops go to the kernel in big batches."""
    out: list[list[Op]] = []
    for op in ops:
        if out and _backend_of(out[-1][0]) == _backend_of(op):
            out[-1].append(op)
        else:
            out.append([op])
    return out


def _backend_of(op: Op) -> str:
    return "ipvs" if op.kind in IPVS_KINDS else op.kind


def _run_group(group: list[Op], backends: Backends, result: ApplyResult) -> list[BackendError]:
    batched = {"ipvs": backends.ipvs, "address": backends.addr}.get(_backend_of(group[0]))
    if batched is not None:  # a thousand VIPs or 30k dests: one batch, not one call each
        errors = batched.apply(group)
        failed = {id(e.op) for e in errors}
        result.applied.extend(op for op in group if id(op) not in failed)
        return errors
    for op in group:
        try:
            _run_one(op, backends, result)
        except BackendError as e:
            e.op = e.op or op
            return [e]
        except OSError as e:
            return [BackendError(f"{op.kind} {op.key}: {e.strerror or e}", e.errno or 0, op)]
        result.applied.append(op)
    return []


def _run_one(op: Op, backends: Backends, result: ApplyResult) -> None:
    if op.kind == "sysctl":
        backends.sysctl.write(op.key, op.after)
    elif op.kind == "link":
        backends.addr.add_link(op.key)          # creates it, or only sets it up
    elif op.kind == "nft":
        result.nft_touched = True
        if op.action == REPLACE:
            result.nft = backends.nft.replace(op.after)
        else:
            backends.nft.delete()
            result.nft = None
    else:
        raise BackendError(f"no backend for {op.kind}", 0, op)


def execute(plan: Plan | Sequence[Op], backends: Backends, *,
            progress: Progress | None = None, rollback: bool = True) -> ApplyResult:
    """Run the ops in order; on the first failing group, undo what ran (reverse order)."""
    ops = list(plan.ops if isinstance(plan, Plan) else plan)
    result = ApplyResult()
    done = 0
    for group in _groups(ops):
        if progress and len(ops) > 1000:
            progress(f"applying {len(group)} {_backend_of(group[0])} ops ({done}/{len(ops)} done)")
        errors = _run_group(group, backends, result)
        done += len(group)
        if errors:
            result.errors.extend(errors)
            if rollback:
                _rollback(result, backends)
            break
    return result


def _rollback(result: ApplyResult, backends: Backends) -> None:
    # a sysctl pask set, or its dummy link, is harmless to leave; undoing could hurt others
    undo = [inv for op in reversed(result.applied) if (inv := op.inverse()) is not None
            and op.kind not in ("sysctl", "link")]
    scratch = ApplyResult()
    for group in _groups(undo):
        errors = _run_group(group, backends, scratch)
        result.rollback_errors.extend(errors)
    result.rolled_back = scratch.applied


def verify(desired: Desired, backends: Backends, state: PaskState, *,
           now: float | None = None, drain_timeout: int = 0,
           before: Observed | None = None, ops: Iterable[Op] = ()) -> tuple[Plan, Observed]:
    """Observe again and plan again: whatever remains is drift the apply did not fix.

    Given ``before`` (the observation the plan was made from) and the ``ops`` that
    were run, IPVS is read again only where the ops wrote (observe_after), so a
    one-weight change costs one service's read, not the whole table's. Without
    ``before``, everything is read again."""
    stats = drain_timeout > 0
    if before is None:
        observed = observe(desired, backends, stats=stats)
    else:
        # draining dests' services too: their connection counts decide the next op
        observed = observe_after(desired, backends, before, ops, stats=stats,
                                 also={dkey.service for dkey in state.draining})
    return diff(desired, observed, state, now=time.time() if now is None else now,
                drain_timeout=drain_timeout), observed


def next_state(previous: PaskState, desired: Desired, fwmarks: dict[str, int],
               plan: Plan, result: ApplyResult | None,
               observed_after: Observed | None = None) -> PaskState:
    """The state file after an apply. On failure, keep owning what the kernel may still hold.

    The nft listing digest is taken from the kernel after the apply, so a later
    hand edit of ``inet pask`` shows up as drift."""
    services = {name: key for key, name in desired.owners.items()}
    if result is not None and not result.ok:
        for name, key in previous.services.items():
            services.setdefault(name, key)
    nft_digest = previous.nft_listing_digest
    if result is not None and result.nft_touched:
        nft_digest = result.nft.listing_digest if result.nft else None
    if observed_after is not None and desired.nft is not None and observed_after.nft is not None \
            and observed_after.nft.comment == desired.nft.digest:
        nft_digest = observed_after.nft.listing_digest
    if desired.nft is None:
        nft_digest = None
    return PaskState(
        services=services,
        fwmarks=dict(fwmarks),
        nft_listing_digest=nft_digest,
        vips=sorted(desired.vips),
        draining=dict(plan.draining),
    )


@dataclass
class Outcome:
    plan: Plan
    result: ApplyResult | None          # None: nothing to do
    remaining: Plan                     # what verify still found (empty = verified)
    state: PaskState                    # the state file to write
    observed: Observed | None = None    # the kernel as last read (after the apply, if any)


def reconcile(desired: Desired, observed: Observed, state: PaskState, fwmarks: dict[str, int],
              backends: Backends, *, now: float | None = None, drain_timeout: int = 0,
              progress: Progress | None = None, plan: Plan | None = None) -> Outcome:
    """One pask-apply run after observe: plan (unless given), execute, verify, next state."""
    now = time.time() if now is None else now
    if plan is None:
        plan = diff(desired, observed, state, now=now, drain_timeout=drain_timeout)
    if not plan.changed:  # nothing written: the observation just made is the verification
        return Outcome(plan, None, plan, next_state(state, desired, fwmarks, plan, None, observed),
                       observed)
    result = execute(plan, backends, progress=progress)
    interim = next_state(state, desired, fwmarks, plan, result)
    # ``observed`` is what the plan was made from: verify re-reads only the IPVS
    # services the plan's ops (and any rollback of them) wrote to.
    remaining, after = verify(desired, backends, interim, now=now, drain_timeout=drain_timeout,
                              before=observed, ops=plan.ops)
    return Outcome(plan, result, remaining,
                   next_state(state, desired, fwmarks, plan, result, after), after)
