"""pask realserver up|down: prepare a real server for L2 / L3 DSR, or undo it (realserver.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence, TextIO

from ..objects import HostObserved
from ..plan import Op, Plan
from ..realserver import (
    DOWN_NOTE, MODES, RealServerError, RealServerHost, execute, hint, outcome, parse_vips, plan_down,
    plan_up, required_sysctls, warnings_for,
)
from ..render.text import op_json, op_line, plan_text
from .common import EXIT_CHANGES, EXIT_ERROR, EXIT_OK, ArgParser


def _plan_text(plan: Plan) -> str:
    """The plan as pask-apply prints it; nothing at all when there is nothing to do (the
    closing line says so)."""
    return plan_text(plan) if plan.ops else ""


EPILOG = """\
examples:
  pask realserver up --vip 10.99.100.1 --mode l2-dsr         VIP on lo, ARP suppressed
  pask realserver up --vip 10.99.100.1 --mode l3-dsr         ipip, VIP on tunl0, rp_filter off
  pask realserver up --vip fd00:99:100::1 --mode l2-dsr      VIP/128 on lo (IPv6: no sysctls)
  pask realserver up --vip fd00:99:100::1 --mode l3-dsr      ip6_tunnel, VIP/128 on ip6tnl0
  pask realserver up --vip 10.99.100.1 --mode l2-dsr --dry-run   print the plan only
  pask realserver down --vip 10.99.100.1                     remove the VIP from lo / tunl0

exit: 0 ok (no changes with --detailed-exitcode), 2 changes (only with
--detailed-exitcode), 1 error. `down` removes the VIPs only: sysctls, tunl0,
ip6tnl0 and the ipip / ip6_tunnel modules are left as they are.
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="pask realserver", description="Prepare a real server for L2 / L3 DSR "
                "(direct routing / ipip tunnelling), or undo it.", epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="{up,down}", required=True, parser_class=ArgParser)
    for name, what in (("up", "add the VIPs and the settings the mode needs"),
                       ("down", "remove the VIPs (sysctls, tunnels, modules stay)")):
        s = sub.add_parser(name, help=what, description=what)
        s.add_argument("--vip", action="append", required=True, metavar="VIP",
                       help="a virtual IP (IPv4 or IPv6) served through the load balancer; repeatable")
        s.add_argument("--mode", choices=MODES, required=(name == "up"),
                       help="l2-dsr (VIP on lo) or l3-dsr (VIP on tunl0; IPv6: ip6tnl0)"
                       + ("" if name == "up" else "; default: remove from both"))
        s.add_argument("--dry-run", "--check", dest="dry_run", action="store_true",
                       help="print the plan and change nothing")
        s.add_argument("--detailed-exitcode", action="store_true",
                       help="exit 0 when nothing changed (or would change), 2 when something did")
        s.add_argument("--format", choices=("text", "json"), default="text")
        s.add_argument("-q", "--quiet", action="store_true", help="print errors and warnings only")
    return p


def run(argv: Sequence[str] | None, host_factory: Callable[[], RealServerHost],
        out: TextIO, err: TextIO) -> int:
    """The whole command with the host injected (tests pass a fake)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (1)
        return int(e.code or 0)
    from ..backend.base import BackendError

    mode: str | None = args.mode
    report: dict = {"command": args.command, "mode": mode, "vips": [], "dry_run": args.dry_run,
                    "changed": False, "ops": [], "counts": {}, "plan_text": "",
                    "verified": None, "drift": [], "errors": [], "warnings": [], "notes": []}

    def say(text: str) -> None:
        if args.format == "text" and not args.quiet and text:
            print(text.rstrip("\n"), file=out)

    def finish(code: int) -> int:
        if args.format == "json":
            print(json.dumps(report, indent=1, sort_keys=True), file=out)
        return code

    def fail(message: str) -> int:
        report["errors"].append(message)
        print(f"pask realserver: {message}", file=err)
        return finish(EXIT_ERROR)

    def planner(observed: HostObserved) -> Plan:
        if args.command == "up":
            return plan_up(mode, vips, observed)
        return plan_down(vips, observed, mode)

    try:
        vips = parse_vips(args.vip)
    except RealServerError as e:
        return fail(str(e))
    report["vips"] = list(vips)
    keys = required_sysctls(mode, vips) if args.command == "up" else {}
    try:
        host = host_factory()
        observed = host.observe(keys)
    except BackendError as e:
        return fail(f"cannot read this host's links, addresses and sysctls: {e}")

    plan = planner(observed)
    report.update(changed=plan.changed, ops=[op_json(o) for o in plan.ops],
                  counts=plan.counts(), plan_text=_plan_text(plan))
    report["warnings"] = warnings_for(mode if args.command == "up" else None, vips, observed)
    if args.command == "down":
        report["notes"].append(DOWN_NOTE)
    for w in report["warnings"]:
        print(w, file=err)
    say(_plan_text(plan))

    if not args.dry_run and plan.changed:
        if not host.can_change():
            return fail("must run as root to change links, addresses and sysctls "
                        "(use --dry-run to see the plan); nothing was changed")
        done: list[Op] = []
        try:
            execute(plan, host, done)
        except BackendError as e:
            applied = (f"the {len(done)} op(s) before it were applied; re-run after fixing the cause"
                       if done else "nothing was changed")
            return fail(f"{op_line(e.op) if e.op else 'apply'}: failed: {e}{hint(e.op)}; {applied}")
        try:
            remaining = planner(host.observe(keys))
        except BackendError as e:
            return fail(f"cannot verify: {e}")
        report["verified"] = not remaining.changed
        if remaining.changed:
            report["drift"] = [op_json(o) for o in remaining.ops]
            return fail("verify: this host still differs after apply:\n" + _plan_text(remaining))

    say(outcome(args.command, mode, vips, changed=plan.changed, dry_run=args.dry_run))
    if args.command == "down" and plan.changed:
        say(DOWN_NOTE)
    return finish(EXIT_CHANGES if args.detailed_exitcode and plan.changed else EXIT_OK)


def _linux_host() -> RealServerHost:
    from ..backend.realserver_host import LinuxRealServerHost
    return LinuxRealServerHost()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `pask realserver ...` (argv without the leading 'realserver')."""
    hosts: list = []

    def factory() -> RealServerHost:
        hosts.append(_linux_host())
        return hosts[-1]

    try:
        return run(argv, factory, sys.stdout, sys.stderr)
    finally:
        for host in hosts:
            getattr(host, "close", lambda: None)()


if __name__ == "__main__":
    sys.exit(main())
