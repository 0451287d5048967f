"""The health daemon (pask-healthd): probes every real server, takes failed ones out of service, brings them back.

The imperative shell around two pure pieces: probes (probes.py) say pass or
fail, the state machine (machine.py) turns results into transitions. On a
transition the daemon writes the health file first (so a pask-apply run at
that moment already agrees), then expands the desired state of that service
only and applies its destination ops through the same executor as
pask-apply: one kernel write per transition, against an in-memory view of
IPVS read whole at start and after an error, service by service otherwise.

The daemon changes destinations only, never services: creating services is
pask-apply's job. It never deletes a destination the config does not name
(pask-apply may be draining it); it deletes only servers that failed with
``on_failure: remove``. SIGTERM/SIGINT exit 0 and leave the kernel as it is.

SIGHUP re-reads the config and keeps the health of servers that stay. Like
keepalived's reload, it costs what changed, not the size of the config: the
config cache parses only edited services, only the services whose config
changed are read from the kernel again and reconciled (one edited weight: one
write), and only then is the rest of the view checked for drift, by the
kernel's per-service digests; services whose digest moved are read
again and reconciled too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from typing import Awaitable, Callable, Iterable, Mapping

from ..model import Config, Health
from ..plan import DELETE, Op, Plan
from ..storage import write_json_atomic
from .checks import Check, checks_of
from .events import EventLog
from .machine import HealthMachine, Transition
from .probes import Result, Target, run_probe
from .view import KernelView

RETRY_DELAY = 2.0              # seconds before a failed kernel write is tried again
MAX_INFLIGHT = 4096            # probes (sockets) open at once, bounded again by RLIMIT_NOFILE
TICK = 0.02                    # seconds: probe start times are spread over the interval in these steps
FLUSH_GAP = 0.1                # seconds between two writes (health file + kernel) in a storm

ProbeFn = Callable[[Health, Target], Awaitable[Result]]


def _default_expand():
    from ..desired import expand
    return expand


def _default_execute():
    from ..apply import execute
    return execute


class HealthDaemon:
    """The health state of one config, and the kernel writes it implies.

    Kernel access goes through ``backends`` (real or fake) and the ``expand`` /
    ``execute`` functions pask-apply uses; probes through ``probe``. All are
    injectable so tests run the real loop against fakes and loopback listeners.
    """

    def __init__(self, config: Config, backends, *, fwmarks: Mapping[str, int] | None = None,
                 health_file: str | None = None,
                 previous: Mapping[str, Mapping[str, object]] | None = None,
                 clock: Callable[[], float] = time.time, probe: ProbeFn = run_probe,
                 expand=None, execute=None, log: EventLog | None = None,
                 rng: random.Random | None = None, max_inflight: int = MAX_INFLIGHT,
                 loader: Callable[[], tuple[Config, Mapping[str, int]]] | None = None,
                 announcer=None):
        self.backends = backends
        self.announcer = announcer             # bgp: health/announce.py BgpAnnouncer
        self.loader = loader
        self.health_file = health_file
        self.clock = clock
        self.probe = probe
        self.expand = expand or _default_expand()
        self.execute = execute or _default_execute()
        self.log = log or EventLog()
        self.rng = rng or random.Random()
        self.max_inflight = max_inflight
        self.machine = HealthMachine(clock, previous)
        self.config = config
        self.fwmarks: dict[str, int] = dict(fwmarks or {})
        self.checks: dict[str, Check] = {}
        self.view: KernelView | None = None    # the IPVS table as this daemon knows it
        self.dirty: set[str] = set()           # services whose dests must be re-applied
        self.why: dict[str, str] = {}          # dirty service -> the reason its ops log ("" config)
        self.health_dirty = True               # the health file must be rewritten
        self.retry_at: float | None = None     # monotonic time of the next retry of a failed write
        self.kernel_writes = 0                 # executor calls that changed something
        self.tasks: dict[str, tuple[Check, asyncio.Task]] = {}
        self.wake: asyncio.Event | None = None
        self.stopping = False
        self.reload_requested = False
        self.resync_due = False                # after a reload: look for drift (resync)
        self.metrics = None                    # DaemonMetrics when metrics.listen is set
        self.config = dataclasses.replace(config, services=())
        self.set_config(config, self.fwmarks)
        self.machine.retain(self.checks)       # servers of the old health file not in the config

    # -- config --------------------------------------------------------------------------
    def set_config(self, config: Config, fwmarks: Mapping[str, int]) -> set[str]:
        """Take a (new) config: servers that stay keep their health, new ones start per
        the initial rule, removed ones are forgotten. Returns the names of the services
        that are new or changed (their fwmark too); those get reconciled."""
        before = {svc.name: svc for svc in self.config.services}
        changed = {svc.name for svc in config.services
                   if (before.get(svc.name) is not svc and before.get(svc.name) != svc)
                   or self.fwmarks.get(svc.name) != fwmarks.get(svc.name)}
        gone = before.keys() - {svc.name for svc in config.services}
        self.config = config
        self.fwmarks = dict(fwmarks)
        if changed or gone:
            stale = changed | gone
            fresh = checks_of(svc for svc in config.services if svc.name in changed)
            dropped = {k for k, c in self.checks.items() if c.service in stale}
            self.checks = {k: c for k, c in self.checks.items() if c.service not in stale}
            self.checks.update(fresh)
            for key, check in fresh.items():
                self.machine.track(key, check.health.rise, check.health.fall)
            if dropped - fresh.keys():
                self.machine.retain(self.checks)
            if dropped != fresh.keys():
                self.health_dirty = True        # servers came or went: the file lists them
        self.dirty = (self.dirty - gone) | changed
        for name in gone:
            self.why.pop(name, None)
        return changed

    def reload(self) -> bool:
        """SIGHUP: read the config (and fwmarks) again through ``loader``, keep health,
        read the kernel again and reconcile. A bad config keeps the running one."""
        from ..errors import ConfigError

        if self.loader is None:
            return False
        try:
            config, fwmarks = self.loader()
        except ConfigError as e:
            self.log("reload_failed", level="error", errors=[str(p) for p in e.problems],
                     message="keeping the running config")
            return False
        except (OSError, ValueError) as e:
            self.log("reload_failed", level="error", errors=[str(e)],
                     message="keeping the running config")
            return False
        if config.metrics != self.config.metrics:
            self.log("reload_metrics_unchanged", level="warning",
                     running=self.config.metrics.listen if self.config.metrics else None,
                     message="metrics settings take effect when pask-healthd restarts")
            config = dataclasses.replace(config, metrics=self.config.metrics)
        changed = self.set_config(config, fwmarks)
        self.why.update(dict.fromkeys(changed, ""))      # their writes are the config's
        try:
            self.refresh(changed)     # what the reload acts on, read as the kernel has it now
        except Exception as e:
            self.log("observe_failed", level="error", error=str(e))
            self.view = None
        self.resync_due = True
        self.log("reload", services=len(config.services), servers=len(self.checks),
                 changed=len(changed))
        return True

    # -- kernel --------------------------------------------------------------------------
    def observe(self) -> None:
        """Read the whole IPVS table (at start, after an error, or when a reload's
        resync cannot digest the kernel)."""
        self.view = KernelView(self.backends.ipvs.observe())

    def _keys_of(self, names: Iterable[str]) -> dict:
        """Service key -> name for these services (one that cannot be keyed yet, e.g. a
        filtered service pask-apply has not given a fwmark, is left out)."""
        from ..desired import service_key

        wanted = set(names)
        out = {}
        for svc in self.config.services:
            if svc.name in wanted:
                try:
                    out[service_key(svc, self.fwmarks)] = svc.name
                except (KeyError, ValueError):
                    continue
        return out

    def refresh(self, names: Iterable[str]) -> None:
        """Read just these services from the kernel into the view (all: when there is none)."""
        if self.view is None:
            self.observe()
            return
        keys = self._keys_of(names)
        if keys:
            self.view.replace(self.backends.ipvs.observe_services(keys), keys)

    def resync(self) -> set[str]:
        """Find drift without a full read: the kernel's per-service digests against
        the view's. Services that differ are read again and marked for a write; returns
        their names. A kernel that cannot be digested is read whole."""
        self.resync_due = False
        fps = self.backends.ipvs.service_digests()
        view = self.view
        drifted: list[str] = []
        if fps is None or view is None or view.ipvs.service_digests is None:
            self.observe()
            names = {svc.name for svc in self.config.services}
        else:
            stale = {k for k in fps.keys() | view.ipvs.services.keys() if fps.get(k) != view.service_digest(k)}
            if not stale:
                return set()
            owners = self._keys_of(svc.name for svc in self.config.services)
            # a service this daemon just wrote has no digest in the view: not drift
            drifted = sorted(owners[k] for k in stale if k in owners and view.service_digest(k) is not None)
            view.replace(self.backends.ipvs.observe_services(stale), stale)
            names = {owners[k] for k in stale if k in owners}
            if drifted:
                self.log("drift", level="warning", services=drifted[:20], count=len(drifted),
                         message="read again and reconciled")
        self.dirty |= names
        self.why.update(dict.fromkeys(drifted, "drift"))
        return names

    def plan_for(self, names: Iterable[str]) -> Plan:
        """Dest ops that bring these services to config + health, from the in-memory view."""
        from ..plan import diff_dests

        if self.view is None:
            self.observe()
        wanted = set(names)
        sub = dataclasses.replace(
            self.config, services=tuple(s for s in self.config.services if s.name in wanted))
        desired = self.expand(sub, self.fwmarks, self.machine.up_map())
        if any(not self.view.has(k) for k in desired.owners):
            self.observe()            # pask-apply may have created it since the last read
        in_kernel = [k for k in desired.owners if self.view.has(k)]
        for key, name in sorted(desired.owners.items(), key=lambda kv: kv[1]):
            if not self.view.has(key):
                self.log("service_missing", level="warning", service=name, key=str(key),
                         message="not in the kernel: run pask-apply; health changes wait for it")
        plan = diff_dests(desired, self.view.of(in_kernel), in_kernel)
        # A dest the config does not name is pask-apply's business (drift or a drain):
        # only servers of the config are ever deleted here (failed with on_failure: remove).
        named = set(self.expand(sub, self.fwmarks, {}).dests)
        ops = tuple(op._replace(reason=self.why.get(op.service, "health"))
                    for op in plan.ops if op.action != DELETE or op.before.key in named)
        return Plan(ops)

    def apply(self, names: Iterable[str]) -> bool:
        """Bring these services' dests in line; True when the kernel now matches."""
        try:
            plan = self.plan_for(names)
        except Exception as e:  # a bad expand (e.g. no fwmark yet) must not stop the probes
            self.log("plan_failed", level="error", services=sorted(names), error=str(e))
            return False
        if not plan.ops:
            return True
        result = self.execute(plan, self.backends, rollback=False)
        self.kernel_writes += 1
        for op in plan.ops:
            self.log("kernel", service=op.service, op=_op_text(op), ok=not _failed(op, result))
        if result.ok:
            self.view.written(plan.ops)
            return True
        for err in result.errors:
            self.log("kernel_error", level="error", error=str(err),
                     op=_op_text(err.op) if isinstance(err.op, Op) else None)
        try:
            self.observe()
        except Exception as e:
            self.log("observe_failed", level="error", error=str(e))
            self.view = None
        return False

    # -- health --------------------------------------------------------------------------
    def record(self, check: Check, result: Result) -> Transition | None:
        """Feed one probe result; on a transition, log it and mark its service for a write."""
        if self.checks.get(check.key) != check:
            return None                     # reloaded away while the probe ran
        if self.log.verbose:
            self.log("probe", level="debug", service=check.service, server=check.server,
                     ok=result.ok, detail=result.detail, elapsed=round(result.elapsed, 4))
        transition = self.machine.record(check.key, result.ok, result.detail)
        if self.metrics is not None:
            self.metrics.probe(check, result)
            if transition is not None:
                self.metrics.transition(check, transition)
        if transition is not None:
            self.log("transition", service=check.service, server=check.server,
                     old=transition.old_name, new=transition.new_name,
                     reason=transition.why, detail=transition.detail)
            self.dirty.add(check.service)
            self.health_dirty = True
            if self.wake is not None:
                self.wake.set()
        return transition

    def write_health(self) -> None:
        if not self.health_file:
            return
        try:
            write_json_atomic(self.health_file, self.machine.to_json())
            self.health_dirty = False
        except OSError as e:
            self.log("health_file_error", level="error", file=self.health_file, error=str(e))

    def flush(self) -> bool:
        """Health file first, then the kernel, then (bgp) the VIPs announced. True when
        nothing is left to do."""
        changed = self.health_dirty or bool(self.dirty)
        try:
            return self._flush()
        finally:
            if changed and self.announcer is not None:
                self.announcer.update(self.config, self.machine.up_map())

    def _flush(self) -> bool:
        if self.health_dirty:
            self.write_health()
        if not self.dirty:
            return True
        names, self.dirty = self.dirty, set()
        if self.apply(names):
            self.retry_at = None
            for name in names:
                self.why.pop(name, None)
            return True
        self.dirty |= names
        self.retry_at = time.monotonic() + RETRY_DELAY
        return False

    async def run_round(self) -> list[Transition]:
        """Probe every server once, all at once, then flush (``--once`` and tests)."""
        checks = list(self.checks.values())
        slots = asyncio.Semaphore(self.max_inflight)

        async def one(check: Check) -> Result:
            async with slots:
                return await self.probe(check.health, check.target)

        results = await asyncio.gather(*(one(c) for c in checks))
        transitions = [t for c, r in zip(checks, results) if (t := self.record(c, r))]
        self.flush()
        return transitions

    # -- the loop ------------------------------------------------------------------------
    async def _probe_loop(self, check: Check, due: float, slots: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await _sleep_until(loop, due)
            async with slots:
                result = await self.probe(check.health, check.target)
            self.record(check, result)
            # A fixed cadence; a probe that overran its slot runs again at once.
            due = max(due + check.health.interval, loop.time())

    def sync_tasks(self, slots: asyncio.Semaphore) -> None:
        """One task per check; a check whose settings changed restarts (its health stays).

        First probes are spread over the interval (no thundering herd at start-up)
        in TICK steps: checks that share a step wake the loop once together, which
        at thousands of servers halves the CPU per probe.
        """
        for key in list(self.tasks):
            check, task = self.tasks[key]
            if self.checks.get(key) != check:
                task.cancel()
                del self.tasks[key]
        base = asyncio.get_running_loop().time()
        for key, check in self.checks.items():
            if key not in self.tasks:
                steps = max(1, int(check.health.interval / TICK))
                due = base + self.rng.randrange(steps) * TICK
                self.tasks[key] = (check, asyncio.create_task(
                    self._probe_loop(check, due, slots), name=f"probe {key}"))

    async def serve(self) -> None:
        """Run until ``stop()``: probes in their own tasks, kernel writes here, one at a time."""
        self.wake = asyncio.Event()
        slots = asyncio.Semaphore(self.max_inflight)
        self.flush()
        last_flush = time.monotonic()
        self.sync_tasks(slots)
        self.log("ready", services=len(self.config.services), servers=len(self.checks),
                 message="serving: probes running, SIGHUP reloads")
        try:
            while not self.stopping:
                timeout = None
                if self.retry_at is not None:
                    timeout = max(0.0, self.retry_at - time.monotonic())
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
                # In a storm (a rack goes down) transitions arrive one by one as their
                # probes end; gathering them for FLUSH_GAP writes the health file (all
                # servers) and the kernel a few times a second instead of per server.
                # An isolated transition is written at once.
                await asyncio.sleep(max(0.0, last_flush + FLUSH_GAP - time.monotonic()))
                self.wake.clear()
                if self.stopping:
                    break
                if self.reload_requested:
                    self.reload_requested = False
                    if self.reload():
                        self.sync_tasks(slots)
                self.flush()
                if self.resync_due:       # the reload's own changes are written: now drift
                    try:
                        self.resync()
                    except Exception as e:
                        self.log("observe_failed", level="error", error=str(e))
                        self.view = None
                    self.flush()
                last_flush = time.monotonic()
        finally:
            for _, task in self.tasks.values():
                task.cancel()
            await asyncio.gather(*(t for _, t in self.tasks.values()), return_exceptions=True)
            self.tasks.clear()
            if self.health_dirty:
                self.write_health()

    def stop(self) -> None:
        self.stopping = True
        if self.wake is not None:
            self.wake.set()

    def request_reload(self) -> None:
        self.reload_requested = True
        if self.wake is not None:
            self.wake.set()


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    """Sleep to an absolute loop time: equal times share one wake-up (asyncio.sleep adds
    each caller's own "now" and so never groups)."""
    if when <= loop.time():
        await asyncio.sleep(0)
        return
    fut = loop.create_future()
    handle = loop.call_at(when, _set_done, fut)
    try:
        await fut
    finally:
        handle.cancel()


def _set_done(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _failed(op: Op, result) -> bool:
    return any(getattr(e, "op", None) is op for e in result.errors)


def _op_text(op: Op) -> str:
    from ..render.text import op_line
    return op_line(op)
