"""apply: run a plan's ops on the kernel, after a preflight that checks what can be checked.

IPVS has no transactions, so "nothing half applied" comes from three things:
everything that can be checked is checked before the first change (config,
scheduler modules, the nft table as a libnftables dry run); ops run in the
safe order plan.PHASES gives them; and when a step still fails, the ops that
already ran are undone in reverse.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .backend.base import BackendError, Backends
from .objects import Desired, NftObserved
from .plan import ADD, IPVS_KINDS, REPLACE, SET, Op, Plan

Progress = Callable[[str], None]


def preflight(desired: Desired, backends: Backends) -> list[str]:
    """Problems that would make the apply fail half-way; checked before any change."""
    problems: list[str] = []
    if desired.modules:
        why = ("this kernel does not have it" if backends.modules is not None
               else "this backend cannot load modules")
        for name in (backends.modules.missing(desired.modules) if backends.modules is not None
                     else desired.modules):
            problems.append(f"kernel module {name} (services: {', '.join(desired.module_users[name])}) "
                            f"is needed, and {why}")
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
    if desired.engines:
        if backends.engines is None:
            problems.append(f"{_section(desired.engines)}: needs a backend that runs daemons, "
                            "and this one cannot")
        else:
            programs = dict.fromkeys([*desired.engines, *(n for e in desired.engines.values()
                                                          for n in e.needs)])
            for name, package in sorted(backends.engines.missing(programs).items()):
                problems.append(f"{_section(desired.engines)}: needs {name}, which is not installed: "
                                f"install the Debian "
                                f"package {package} (apt-get install {package})")
    return problems


def _section(engines) -> str:
    """The config section that asks for these engines (bird: bgp; the others: ha)."""
    return "bgp" if "bird" in engines else "ha"


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
    current, group = None, None
    for op in ops:
        kind = op.kind
        backend = "ipvs" if kind in IPVS_KINDS else kind       # _backend_of, inline: 34k ops
        if group is not None and backend == current:
            group.append(op)
        else:
            current, group = backend, [op]
            out.append(group)
    return out


def _backend_of(op: Op) -> str:
    return "ipvs" if op.kind in IPVS_KINDS else op.kind


def _run_group(group: list[Op], backends: Backends, result: ApplyResult) -> list[BackendError]:
    batched = {"ipvs": backends.ipvs, "address": backends.addr}.get(_backend_of(group[0]))
    if batched is not None:  # a thousand VIPs or 30k dests: one batch, not one call each
        errors = batched.apply(group)
        if errors:
            failed = {id(e.op) for e in errors}
            result.applied.extend(op for op in group if id(op) not in failed)
        else:
            result.applied.extend(group)
        return errors
    for op in group:
        try:
            _run_one(op, backends, result)
        except BackendError as e:
            e.op = e.op or op
            return [e]
        except OSError as e:
            return [BackendError(f"{op.kind} {op.label}: {e.strerror or e}", e.errno or 0, op)]
        result.applied.append(op)
    return []


def _run_one(op: Op, backends: Backends, result: ApplyResult) -> None:
    if op.kind == "sysctl":
        backends.sysctl.write(op.label, op.after)
    elif op.kind == "module":
        if backends.modules is None:
            raise BackendError(f"no backend loads kernel modules ({op.label})", 0, op)
        if op.action == ADD:
            backends.modules.load(op.after)
            return
        try:
            backends.modules.reload(op.after)
        except BackendError as e:
            if e.errno != errno.EBUSY:
                raise
            raise BackendError(
                f"{e} {op.label} reads its parameters only at load, and it is in use by open "
                f"connections of the services it serves: end them (or unload it by hand), then "
                f"apply again", e.errno, op) from None
    elif op.kind == "sync":
        if op.action == ADD:
            backends.ipvs.start_sync_daemon(op.after)
        else:
            backends.ipvs.stop_sync_daemon(op.before)
    elif op.kind == "engine":
        if backends.engines is None:
            raise BackendError(f"no backend runs daemons ({op.label})", 0, op)
        if op.action == ADD:
            backends.engines.start(op.after)
        elif op.action == SET:
            backends.engines.reload(op.after)
        else:
            backends.engines.stop(op.before)
    elif op.kind == "link":
        backends.addr.add_link(op.label)          # creates it, or only sets it up
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
    # a sysctl pask set, its dummy link or a module it loaded is harmless to leave;
    # undoing could hurt others
    undo = [inv for op in reversed(result.applied) if (inv := op.inverse()) is not None
            and op.kind not in ("sysctl", "link", "module")]
    scratch = ApplyResult()
    for group in _groups(undo):
        errors = _run_group(group, backends, scratch)
        result.rollback_errors.extend(errors)
    result.rolled_back = scratch.applied
