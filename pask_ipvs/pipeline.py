"""The pask-apply use case: load -> validate -> model -> desired -> observe -> plan ->
apply -> verify, as one function of its inputs and its backends.

``apply_config`` takes the request (the CLI's flags as data), a factory of the
backends (real, or the fakes for --offline and tests) and an ``Output`` for what
the operator reads while it runs; it returns the report. It prints nothing
itself and never exits: the CLI (cli/apply.py) parses arguments, prints and turns
the report into an exit code.

The steps, in the order they run, live in their own modules: load.py (file ->
YAML with lines), validate.py, model.py (typed config), fwmarks.py, desired.py,
observe.py, plan.py, apply.py (preflight + execute + rollback), verify.py (observe
again, plan again, next state). fastpath/ only makes runs faster.
"""

from __future__ import annotations

import errno
import gc
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

# Imported where used: a no-op run (fastpath/noop.py) never loads the planner.
if TYPE_CHECKING:
    from .apply import Progress
    from .backend.base import Backends
    from .errors import ConfigError
    from .model import Config
    from .objects import Desired, Observed
    from .plan import Plan
    from .state import PaskState
    from .verify import Outcome

PLAN_LINES_SHOWN = 50       # an apply prints this many plan lines unless -v

# A run's big objects when the process ends right after it (ApplyRequest.exiting): freeing
# some 10^6 objects one by one costs a cold apply at 1024 x 32 ~30 ms natively, ~0.5 s in
# the IPVS VM, for memory the OS takes back whole at exit (cli/apply.py: run()).
_LEFT_TO_EXIT: list[object] = []


class Output(Protocol):
    """Where a run's messages go while it runs (the CLI: stdout / stderr, by format)."""

    def info(self, msg: str) -> None:
        """The plan and the result, for the operator."""

    def progress(self, msg: str) -> None:
        """Long work and -v notes."""

    def error(self, msg: str) -> None:
        """Each error, as it ends the run."""


@dataclass(frozen=True)
class ApplyRequest:
    config: str
    state_file: str
    health_file: str
    dry_run: bool = False
    offline: bool = False           # plan against an empty in-memory kernel; implies dry_run
    diff: bool = False              # show the plan before applying
    verbose: int = 0
    quiet: bool = False
    json: bool = False              # the report carries every op and the plan text (costly at 30k ops)
    detailed_exitcode: bool = False
    node: str | None = None         # ha: which node this is (default: by its peer_link address)
    exiting: bool = False           # the process ends after this run: its big objects are not freed

    @property
    def planning_only(self) -> bool:
        return self.dry_run or self.offline


def apply_config(request: ApplyRequest, backends: Callable[[], "Backends"], out: Output) -> dict:
    """One pask-apply run; the report (the JSON of --format json). ``backends`` is called
    at most once, and only when the kernel is read."""
    report: dict = {"config": request.config, "dry_run": request.planning_only, "changed": False,
                    "ops": [], "counts": {}, "plan_text": "", "verified": None, "drift": [],
                    "errors": []}
    # A big config makes some 10^5 long-lived objects (model, desired state, plan, the
    # read-back) and next to no cyclic garbage: the cyclic GC would only walk them again
    # and again (a third of expand's CPU at 1024 x 32). One run, then the process ends.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        errors = _run(request, backends, out, report)
    finally:
        if gc_was_enabled:
            gc.enable()
    report["errors"].extend(errors)
    for message in errors:
        out.error(message)
    return report


def reconcile(desired: Desired, observed: Observed, state: PaskState, fwmarks: dict[str, int],
              backends: "Backends", *, now: float | None = None, drain_timeout: int = 0,
              progress: Progress | None = None, plan: Plan | None = None,
              lean_above: int | None = None) -> Outcome:
    """Everything after observe: plan (unless given), execute, verify, next state.

    ``lean_above``: a plan of more ops than this that applied cleanly is let go before
    verify (the outcome holds its PlanSummary, the result no applied ops): a cold apply's
    34k ops are not kept through verify. The caller must hold no reference to ``plan``."""
    from .apply import execute
    from .observe import touched_services
    from .plan import PlanSummary, diff
    from .verify import Outcome, next_state, verify

    now = time.time() if now is None else now
    if plan is None:
        plan = diff(desired, observed, state, now=now, drain_timeout=drain_timeout)
    if not plan.changed:  # nothing written: the observation just made is the verification
        return Outcome(plan, None, plan, next_state(state, desired, fwmarks, plan, None, observed),
                       observed)
    result = execute(plan, backends, progress=progress)
    interim = next_state(state, desired, fwmarks, plan, result)
    touched = touched_services(plan.ops)
    if lean_above is not None and result.ok and len(plan) > lean_above:
        plan = PlanSummary.of(plan)
        result.applied.clear()
    # ``observed`` is what the plan was made from: verify re-reads only the IPVS
    # services the plan's ops (and any rollback of them) wrote to.
    remaining, after = verify(desired, backends, interim, now=now, drain_timeout=drain_timeout,
                              before=observed, touched=touched)
    return Outcome(plan, result, remaining,
                   next_state(state, desired, fwmarks, plan, result, after), after)


# -- the run ---------------------------------------------------------------------------

@dataclass
class _Planned:
    """What the plan step hands to reconcile (None of it when the run ends at the plan)."""

    desired: Desired
    observed: Observed
    plan: Plan | None
    fwmarks: dict[str, int]

    def take_plan(self) -> Plan:
        plan, self.plan = self.plan, None
        assert plan is not None
        return plan


def _run(request: ApplyRequest, make_backends: Callable[[], "Backends"], out: Output,
         report: dict) -> list[str]:
    """The run, filling ``report``; the messages of the errors that ended it (none: success)."""
    from .backend.base import BackendError
    from .config_file import read_config_text
    from .errors import ConfigError
    from .fastpath import noop
    from .fastpath.config_cache import ConfigCache, cache_file_for, code_digest
    from .health_file import read_health_bytes
    from .state import ConfigDigest, load_state, mark_applied, save_state
    from .storage import locked

    try:
        text = read_config_text(request.config)
    except ConfigError as e:
        return _config_problems(request, e)
    cache = ConfigCache(None if request.offline else cache_file_for(request.state_file))
    try:
        with locked(request.state_file, exclusive=not request.planning_only):
            state = load_state(request.state_file)
            health_raw = read_health_bytes(request.health_file)
            code = code_digest()
            config_digest = ConfigDigest(code, text)     # the text's stand-in for the fingerprint
            backends = None
            if not request.offline and noop.inputs_unchanged(state, code, config_digest, health_raw):
                backends = make_backends()
                if noop.kernel_unchanged(state, backends, out.progress if request.verbose else None):
                    if not request.planning_only:
                        mark_applied(request.state_file)
                    _report_unchanged(request, out, report)
                    return []
            try:
                config = cache.load(request.config, text)
            except ConfigError as e:
                return _config_problems(request, e)
            del text                    # 1.5 MB at 1024 x 32, held to the end for nothing
            if request.verbose:
                out.progress(f"config: {cache.how}")
            # A run that may apply writes the cache: a big one from a forked child, beside
            # the plan, done before the kernel is written (its pickling's memory is never on
            # top of the apply's); a run whose plan fails drops it.
            if not request.planning_only:
                cache.save_begin()
            planned = None
            try:
                backends = backends or make_backends()
                planned, errors = _plan(request, out, report, config, state, health_raw, backends)
            finally:
                if planned is None:
                    cache.save_drop()
            if planned is None:
                return errors
            cache_saved = cache.save_end()
            # the plan goes to reconcile alone: a big one is let go before verify
            outcome = reconcile(planned.desired, planned.observed, state, planned.fwmarks,
                                backends, plan=planned.take_plan(),
                                drain_timeout=config.drain_timeout,
                                progress=None if request.quiet else out.progress,
                                lean_above=PLAN_LINES_SHOWN)
            if request.exiting:
                _LEFT_TO_EXIT.append((config, cache, planned, outcome))
            noop.record_verified(outcome, planned.desired, code, config_digest, health_raw)
            save_state(request.state_file, outcome.state)
            if outcome.verified:
                mark_applied(request.state_file)
            if not cache_saved and request.verbose:
                out.progress(f"could not write the config cache {cache.cache_file} (not needed)")
    except BlockingIOError:
        return [f"{request.state_file}: another pask-apply is running (lock held)"]
    except BackendError as e:
        return [f"kernel: {e}{_hint(e)}"]
    except OSError as e:
        return [f"{getattr(e, 'filename', '') or 'pask-apply'}: {e.strerror or e}{_hint(e)}"]
    except ValueError as e:  # corrupt state or health file
        return [str(e)]
    return _report_outcome(request, out, report, outcome)


def _plan(request: ApplyRequest, out: Output, report: dict, config: "Config", state: PaskState,
          health_raw: bytes, backends: "Backends") -> tuple[_Planned | None, list[str]]:
    """fwmarks -> expand -> observe -> preflight -> diff, the plan shown as asked.
    (None, errors) when the run ends here: an error, or a dry run done (no errors)."""
    from .apply import preflight
    from .backend.base import BackendError
    from .desired import expand
    from .fwmarks import fwmarks_for
    from .health_file import parse_health
    from .observe import observe_to_plan
    from .plan import diff
    from .render.text import op_json, plan_text

    health = parse_health(health_raw, request.health_file)
    fwmarks = fwmarks_for(config, state.fwmarks)
    desired = expand(config, fwmarks, health)
    if config.bgp is not None:           # BIRD, with the VIPs announced now
        from .bgp import engines
        desired.engines.update(engines(config, request.state_file, health))
    try:
        ha_problems = _ha_desired(request, config, state, desired, backends)
        if ha_problems:
            return None, ha_problems + ["nothing was changed"]
        # IPVS by digests: one changed service of 1024 is the only one decoded
        observed = observe_to_plan(desired, backends, stats=config.drain_timeout > 0,
                                   also={dkey.service for dkey in state.draining})
    except BackendError as e:
        return None, [f"cannot read the kernel's state: {e}{_hint(e)}"]
    problems = preflight(desired, backends)
    if problems:
        return None, [f"{request.config}: {p}" for p in problems] + ["nothing was changed"]
    plan = diff(desired, observed, state, now=time.time(), drain_timeout=config.drain_timeout)
    shown_all = request.verbose or request.planning_only or request.diff
    text = plan_text(plan, limit=None if shown_all else PLAN_LINES_SHOWN)
    report.update(changed=plan.changed, counts=plan.counts())
    if request.json:
        report.update(ops=[op_json(o) for o in plan.ops], plan_text=plan_text(plan))
    if shown_all or not plan.changed:
        out.info(text.rstrip("\n"))
    if request.planning_only:
        return None, []
    return _Planned(desired, observed, plan, fwmarks), []


def _ha_desired(request: ApplyRequest, config: "Config", state: PaskState, desired: Desired,
                backends: "Backends") -> list[str]:
    """With ha: which node this is (--node, or its address on peer_link) and its engines.
    Either way: what earlier runs started that this config no longer has (to stop)."""
    ha = config.ha
    if ha is not None:
        from .ha import NodeError, engines, find_node
        from .objects import VipAddress
        from .render.ha import EnginePaths

        link, held = backends.addr.observe(ha.peer_link)
        if request.offline:     # an empty kernel holds no address: plan as the node named, or the first
            named = ha.node(request.node) if request.node else ha.nodes[0]
            if named is None:
                return [_ha_problem(request.config, ("ha", "nodes"),
                                    f"--node {request.node}: the config's ha.nodes are "
                                    + ", ".join(n.name for n in ha.nodes))]
            held = frozenset({VipAddress(ha.peer_link, named.address, 32)})
        elif link is None:
            return [_ha_problem(request.config, ("ha", "peer_link"),
                                f"peer_link {ha.peer_link} does not exist on this host")]
        try:
            node = find_node(ha, request.node, [a.addr for a in held])
        except NodeError as e:
            named = ha.node(request.node) if request.node else None
            where = ("ha", "nodes", ha.nodes.index(named), "address") if named else ("ha", "nodes")
            return [_ha_problem(request.config, where, str(e))]
        desired.engines = engines(config, node, EnginePaths.for_state_file(request.state_file))
    desired.retired_engines = {n: e for n, e in state.engines.items() if n not in desired.engines}
    desired.retired_sync = frozenset(state.sync_daemons) - desired.sync_daemons
    desired.retired_vips = frozenset(state.vips) - desired.vips
    return []


def _ha_problem(path: str, where: tuple, message: str) -> str:
    """FILE:LINE: $.path: message, the line read again (an error path: the run ends here)."""
    from .errors import Problem, format_path
    from .load import load_document

    try:
        with open(path, encoding="utf-8") as f:
            _, lines = load_document(path, f.read())
        line = lines.line(where)
    except Exception:      # the message matters more than its line
        line = 0
    return str(Problem(path, line, format_path(where), message))


def _report_outcome(request: ApplyRequest, out: Output, report: dict, outcome: Outcome) -> list[str]:
    """The apply's result into the report and the operator's view; errors if it failed."""
    from .render.text import op_json, plan_text

    plan, result, remaining = outcome.plan, outcome.result, outcome.remaining
    if result is not None and not result.ok:
        msgs = [f"apply failed: {e}" for e in result.errors]
        if result.rolled_back:
            msgs.append(f"rolled back {len(result.rolled_back)} op(s) that had been applied")
        msgs += [f"rollback failed: {e}" for e in result.rollback_errors]
        return msgs
    report["verified"] = not remaining.changed
    if remaining.changed:
        report["drift"] = [op_json(o) for o in remaining.ops]
        return (["verify: the kernel still differs from the config after apply:"]
                + ["  " + line for line in plan_text(remaining).splitlines()])
    if plan.changed and not (request.diff or request.verbose):
        out.info(plan_text(plan, limit=PLAN_LINES_SHOWN).rstrip("\n") if len(plan) <= PLAN_LINES_SHOWN
                 else f"applied {len(plan)} changes ({_counts(plan)}).")
    if plan.changed:
        out.info("Applied and verified: the kernel matches the config.")
    return []


def _report_unchanged(request: ApplyRequest, out: Output, report: dict) -> None:
    """Exactly what an ordinary run reports when its plan is empty, without importing the
    planner (tests/test_fast_noop.py holds the two outputs equal)."""
    from .fastpath import noop
    from .render import NO_CHANGES

    noop.fill_unchanged(report, dry_run=request.planning_only, with_plan_text=request.json)
    if request.verbose:
        out.progress("config, health and kernel unchanged since the last verified apply "
                     "(fingerprints match): nothing to plan")
    out.info(NO_CHANGES)


def _config_problems(request: ApplyRequest, e: "ConfigError") -> list[str]:
    return [str(p) for p in e.problems] + \
        [f"{request.config}: {len(e.problems)} problem(s); nothing was changed"]


def _counts(plan: Plan) -> str:
    return ", ".join(f"{n} {k}" for k, n in plan.counts().items() if n)


def _hint(e: Exception) -> str:
    code = getattr(e, "errno", 0)
    if code in (errno.EPERM, errno.EACCES):
        return " (pask-apply needs root: run it with sudo, or use --offline to only plan)"
    if code in (errno.EPROTONOSUPPORT, errno.ENOENT) and "IPVS" in str(e):
        return " (this kernel has no IPVS: load ip_vs, or use --offline to only plan)"
    return ""
