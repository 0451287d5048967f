"""Command-line entry points: pask-apply, pask-status, and the `pask` umbrella.

Exit codes (design.md): 0 ok / no changes, 2 changes (with --detailed-exitcode),
1 any error. argparse's own usage errors exit 1 too, never 2, so that 2 always
means "changes" to scripts and Ansible.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
import time
from typing import Sequence

from . import __version__
from .state import DEFAULT_HEALTH_FILE, DEFAULT_STATE_FILE

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2

APPLY_EPILOG = """\
examples:
  pask-apply --dry-run /etc/pask/config.yaml      show the plan, change nothing
  pask-apply /etc/pask/config.yaml                reconcile the kernel, then verify
  pask-apply --detailed-exitcode config.yaml      exit 0 = no changes, 2 = changed, 1 = error
  pask-apply --format json --dry-run config.yaml  the plan as JSON (for tools)
  pask-apply --offline config.yaml                plan against an empty kernel (no root, no kernel access)

Plan lines read like a diff: '+' add, '~' change, '-' delete, '±' replace.
Only objects pask owns are changed: the services the config declares (recorded
in the state file) and the nftables table 'inet pask'. Foreign IPVS services and
other nft tables are never touched. A bad config changes nothing and lists
every problem as FILE:LINE: $.path: message.

Beside the state file pask keeps a cache of the validated config and the
fingerprint of the last verified kernel: a re-run with nothing changed answers
from them without parsing the config (-v says so). Both are only for speed;
deleting them makes the next run do everything the long way.
"""


class ArgParser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit 1: 2 means "changes"
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def _apply_parser(prog: str = "pask-apply") -> argparse.ArgumentParser:
    p = ArgParser(prog=prog, description="Validate a pask config, reconcile the kernel "
                "(IPVS, nftables, VIPs, sysctls) to it, and verify the result.",
                epilog=APPLY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG", help="the YAML config file")
    p.add_argument("--dry-run", "--check", dest="dry_run", action="store_true",
                   help="print the plan and change nothing")
    p.add_argument("--diff", action="store_true",
                   help="print the plan before applying (the default in --dry-run)")
    p.add_argument("--detailed-exitcode", action="store_true",
                   help="exit 0 when nothing changed (or would change), 2 when something did, 1 on error")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.add_argument("--state-file", default=DEFAULT_STATE_FILE,
                   help=f"what pask owns, kept between runs (default {DEFAULT_STATE_FILE})")
    p.add_argument("--health-file", default=DEFAULT_HEALTH_FILE,
                   help=f"server health written by pask-healthd (default {DEFAULT_HEALTH_FILE})")
    p.add_argument("--offline", action="store_true",
                   help="plan against an empty in-memory kernel; implies --dry-run")
    p.add_argument("-v", "--verbose", action="count", default=0, help="list every op, show progress")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.add_argument("--version", action="version", version=f"pask-ipvs {__version__}")
    return p


class _Out:
    def __init__(self, fmt: str, quiet: bool, verbose: int):
        self.fmt, self.quiet, self.verbose = fmt, quiet, verbose

    def info(self, msg: str) -> None:
        if not self.quiet and self.fmt == "text":
            print(msg, flush=True)

    def progress(self, msg: str) -> None:
        if not self.quiet:
            print(f"pask-apply: {msg}", file=sys.stderr, flush=True)

    def error(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)


def run_apply(args: argparse.Namespace) -> int:
    from .backend.base import BackendError
    from .compiled import ConfigCache, cache_file_for, code_digest, read_config_text
    from .errors import ConfigError
    from .state import load_state, locked, read_health_bytes, save_state

    out = _Out(args.format, args.quiet, args.verbose)
    dry_run = args.dry_run or args.offline
    report: dict = {"config": args.config, "dry_run": dry_run, "changed": False, "ops": [],
                    "counts": {}, "plan_text": "", "verified": None, "drift": [], "errors": []}

    def finish(code: int) -> int:
        if args.format == "json":
            print(json.dumps(report, indent=1, sort_keys=True))
        return code

    def fail(messages: list[str]) -> int:
        report["errors"].extend(messages)
        for m in messages:
            out.error(m)
        return finish(EXIT_ERROR)

    def config_problems(e: ConfigError) -> int:
        return fail([str(p) for p in e.problems] +
                    [f"{args.config}: {len(e.problems)} problem(s); nothing was changed"])

    try:
        text = read_config_text(args.config)
    except ConfigError as e:
        return config_problems(e)
    cache = ConfigCache(None if args.offline else cache_file_for(args.state_file))
    try:
        with locked(args.state_file, exclusive=not dry_run):
            state = load_state(args.state_file)
            health_raw = read_health_bytes(args.health_file)
            code = code_digest()
            backends = None
            if not args.offline and _fingerprint_applies(state, code, text, health_raw):
                backends = _backends(False)
                if _kernel_unchanged(state, backends, out):
                    return _report_unchanged(out, report, args, dry_run, finish)
            try:
                config = cache.load(args.config, text)
            except ConfigError as e:
                return config_problems(e)
            if args.verbose:
                out.progress(f"config: {cache.how}")
            outcome, desired = _plan_and_apply(args, out, report, dry_run, finish, fail, config,
                                               state, health_raw, backends)
            _record_fingerprint(outcome, desired, code, text, health_raw)
            save_state(args.state_file, outcome.state)
            if not cache.save() and args.verbose:
                out.progress(f"could not write the config cache {cache.cache_file} (not needed)")
    except _Ended as e:
        return e.code
    except BlockingIOError:
        return fail([f"{args.state_file}: another pask-apply is running (lock held)"])
    except BackendError as e:
        return fail([f"kernel: {e}{_hint(e)}"])
    except OSError as e:
        return fail([f"{getattr(e, 'filename', '') or 'pask-apply'}: {e.strerror or e}{_hint(e)}"])
    except ValueError as e:  # corrupt state or health file
        return fail([str(e)])

    from .render.text import op_json, plan_text

    plan = outcome.plan
    result, remaining = outcome.result, outcome.remaining
    if result is not None and not result.ok:
        msgs = [f"apply failed: {e}" for e in result.errors]
        if result.rolled_back:
            msgs.append(f"rolled back {len(result.rolled_back)} op(s) that had been applied")
        msgs += [f"rollback failed: {e}" for e in result.rollback_errors]
        return fail(msgs)
    report["verified"] = not remaining.changed
    if remaining.changed:
        report["drift"] = [op_json(o) for o in remaining.ops]
        return fail(["verify: the kernel still differs from the config after apply:"]
                    + ["  " + line for line in plan_text(remaining).splitlines()])
    if plan.changed and not (args.diff or args.verbose):
        out.info(plan_text(plan, limit=50).rstrip("\n") if len(plan) <= 50
                 else f"applied {len(plan)} changes ({_counts(plan)}).")
    if plan.changed:
        out.info("Applied and verified: the kernel matches the config.")
    return finish(EXIT_CHANGES if args.detailed_exitcode and plan.changed else EXIT_OK)


class _Ended(Exception):
    """The run ended before reconcile (an error reported, or a dry run printed): its exit code."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def _plan_and_apply(args, out, report, dry_run, finish, fail, config, state, health_raw, backends):
    """expand -> observe -> preflight -> diff -> (dry run: stop) -> reconcile.
    Returns (outcome, desired); raises _Ended with the exit code when the run ends earlier."""
    from .apply import observe, preflight, reconcile
    from .backend.base import BackendError
    from .desired import expand
    from .plan import diff
    from .render.text import op_json, plan_text
    from .state import allocate_fwmarks, parse_health

    health = parse_health(health_raw, args.health_file)
    fwmarks = allocate_fwmarks(
        [s.name for s in config.services if s.uses_fwmark],
        {s.name: s.fwmark for s in config.services if s.fwmark}, state.fwmarks)
    desired = expand(config, fwmarks, health)
    backends = backends or _backends(args.offline)
    try:
        observed = observe(desired, backends, stats=config.drain_timeout > 0)
    except BackendError as e:
        raise _Ended(fail([f"cannot read the kernel's state: {e}{_hint(e)}"])) from None
    problems = preflight(desired, backends)
    if problems:
        raise _Ended(fail([f"{args.config}: {p}" for p in problems] + ["nothing was changed"]))
    plan = diff(desired, observed, state, now=time.time(), drain_timeout=config.drain_timeout)
    text = plan_text(plan, limit=None if (args.verbose or dry_run or args.diff) else 50)
    report.update(changed=plan.changed, counts=plan.counts())
    if args.format == "json":  # costly at 30k ops: only when asked
        report.update(ops=[op_json(o) for o in plan.ops], plan_text=plan_text(plan))
    if dry_run or args.diff or args.verbose or not plan.changed:
        out.info(text.rstrip("\n"))
    if dry_run:
        raise _Ended(finish(EXIT_CHANGES if args.detailed_exitcode and plan.changed else EXIT_OK))
    outcome = reconcile(desired, observed, state, fwmarks, backends, plan=plan,
                        drain_timeout=config.drain_timeout,
                        progress=None if args.quiet else out.progress)
    return outcome, desired


# -- the no-op fast path ---------------------------------------------------------------
#
# A run that leaves the kernel verified equal to the config records two digests in
# the state file: of its inputs (pask's code, the config file, the health file, what
# pask owns) and of the kernel it read (apply.kernel_fingerprint). The next run with
# the same inputs reads the kernel's fingerprint the cheap way (no dest decoded, no
# YAML parsed); when it is the same too, the plan would be empty: nothing is loaded,
# expanded or diffed. Any difference, anywhere, takes the ordinary path.

def _fingerprint_applies(state, code: bytes, text: str, health_raw: bytes) -> bool:
    fp = state.fingerprint
    return bool(fp) and not state.draining and fp["inputs"] == state.inputs_digest(code, text, health_raw)


def _kernel_unchanged(state, backends, out: _Out) -> bool:
    from .backend.base import BackendError
    from .fingerprint import fingerprint_now

    fp = state.fingerprint
    try:
        now = fingerprint_now(backends, fp.get("vip_interface"), fp["sysctls"])
    except BackendError:
        return False           # the ordinary path reads again, and reports what fails
    if now != fp["kernel"] and out.verbose:
        out.progress("config unchanged, kernel changed since the last verified apply: planning")
    return now == fp["kernel"]


EMPTY_PLAN_COUNTS = {"add": 0, "set": 0, "delete": 0, "replace": 0}   # Plan().counts()


def _report_unchanged(out: _Out, report: dict, args, dry_run: bool, finish) -> int:
    """Exactly what an ordinary run prints when its plan is empty (without importing the
    planner: tests/test_fast_noop.py holds the two outputs equal)."""
    from .render import NO_CHANGES

    report.update(changed=False, counts=dict(EMPTY_PLAN_COUNTS), verified=None if dry_run else True)
    if args.format == "json":
        report["plan_text"] = NO_CHANGES + "\n"
    if args.verbose:
        out.progress("config, health and kernel unchanged since the last verified apply "
                     "(fingerprints match): nothing to plan")
    out.info(NO_CHANGES)
    return finish(EXIT_OK)


def _record_fingerprint(outcome, desired, code: bytes, text: str, health_raw: bytes) -> None:
    """Into outcome.state: only after a run whose result was verified, with nothing draining."""
    from .fingerprint import kernel_fingerprint

    verified = (outcome.result is None or outcome.result.ok) and not outcome.remaining.changed
    if not verified or outcome.state.draining or outcome.observed is None:
        return
    kernel = kernel_fingerprint(outcome.observed)
    if kernel is None:
        return
    outcome.state.fingerprint = {
        "inputs": outcome.state.inputs_digest(code, text, health_raw),
        "kernel": kernel,
        "sysctls": sorted(desired.sysctls),
        "vip_interface": desired.vip_interface,
    }


def _counts(plan) -> str:
    c = plan.counts()
    return ", ".join(f"{n} {k}" for k, n in c.items() if n)


def _backends(offline: bool):
    if offline:
        from .backend.fake import fake_backends
        return fake_backends()
    from .backend.real import real_backends
    return real_backends()


def _hint(e: Exception) -> str:
    code = getattr(e, "errno", 0)
    if code in (errno.EPERM, errno.EACCES):
        return " (pask-apply needs root: run it with sudo, or use --offline to only plan)"
    if code in (errno.EPROTONOSUPPORT, errno.ENOENT) and "IPVS" in str(e):
        return " (this kernel has no IPVS: load ip_vs, or use --offline to only plan)"
    return ""


def apply_main(argv: Sequence[str] | None = None) -> int:
    return run_apply(_apply_parser().parse_args(argv))


# -- validate ------------------------------------------------------------------

def validate_main(argv: Sequence[str] | None = None, prog: str = "pask validate") -> int:
    """Pure check of a config file (no kernel access): for editors, CI and Ansible's validate:."""
    from .errors import ConfigError
    from .load import load_config

    p = ArgParser(prog=prog, description="Check a pask config file; exit 0 valid, 1 invalid.")
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        for prob in e.problems:
            print(prob, file=sys.stderr)
        print(f"{args.config}: {len(e.problems)} problem(s)", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        print(f"{args.config}: cannot read config: {e.strerror}", file=sys.stderr)
        return EXIT_ERROR
    if not args.quiet:
        n = sum(len(s.real_servers) for s in config.services)
        print(f"{args.config}: valid ({len(config.services)} services, {n} real servers)")
    return EXIT_OK


# -- status ----------------------------------------------------------------------

def status_main(argv: Sequence[str] | None = None, prog: str = "pask-status") -> int:
    from .status import run_status

    p = ArgParser(prog=prog, description="Show IPVS services and real servers with weight, "
                "health, active/inactive connections and rates.")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--state-file", default=DEFAULT_STATE_FILE)
    p.add_argument("--health-file", default=DEFAULT_HEALTH_FILE)
    p.add_argument("--all", action="store_true", help="also show services pask does not own")
    return run_status(p.parse_args(argv))


# -- pask umbrella -----------------------------------------------------------------

COMMANDS = {
    "apply": "validate, reconcile and verify (same as pask-apply)",
    "validate": "check a config file without touching the kernel",
    "status": "services, servers, health, weights, connections (same as pask-status)",
    "healthd": "run the health daemon (same as pask-healthd)",
    "realserver": "prepare or undo a real server for L2/L3 DSR",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: pask COMMAND [ARGS]\n\ncommands:")
        for name, what in COMMANDS.items():
            print(f"  {name:<11} {what}")
        print("\n'pask COMMAND --help' tells more.")
        return EXIT_OK if argv else EXIT_ERROR
    if argv[0] == "--version":
        print(f"pask-ipvs {__version__}")
        return EXIT_OK
    cmd, rest = argv[0], argv[1:]
    if cmd == "apply":
        return run_apply(_apply_parser("pask apply").parse_args(rest))
    if cmd == "validate":
        return validate_main(rest)
    if cmd == "status":
        return status_main(rest, prog="pask status")
    if cmd == "healthd":
        from .health.daemon import main as healthd_main
        return healthd_main(rest)
    if cmd == "realserver":
        from .realserver import main as realserver_main
        return realserver_main(rest)
    print(f"pask: unknown command {cmd!r} (commands: {', '.join(COMMANDS)})", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
