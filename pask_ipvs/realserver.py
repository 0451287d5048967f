"""`pask realserver up|down`: prepare a real server for L2 / L3 DSR, and undo it.

With direct routing (L2 DSR) and ipip tunnelling (L3 DSR) the load balancer
forwards packets that are still addressed to the VIP, and the real server
answers the client itself. So each real server needs, and gets from `up`:

* l2-dsr: the VIP as /32 on ``lo`` (``lo`` up), and ARP suppression
  (``arp_ignore=1``, ``arp_announce=2`` on ``all`` and ``lo``) so that it never
  answers ARP for the VIP and steals the load balancer's traffic.
* l3-dsr: the ``ipip`` module (it creates ``tunl0`` in every network
  namespace), ``tunl0`` up with the VIP as /32, ``rp_filter=0`` on ``tunl0`` and
  ``all`` (the decapsulated packet arrives on ``tunl0`` from a client routed via
  another link: strict reverse-path filtering drops it), and the same ARP
  suppression on ``all``: a VIP on ``tunl0`` would otherwise be answered for on
  the real server's LAN.

`down` removes the VIP addresses (/32 on ``lo`` / ``tunl0``) and nothing else:
sysctls, ``tunl0`` and the ``ipip`` module stay as they are, because other VIPs
(or other software) on the host may rely on them and they do nothing without a
VIP. Re-running `up` or `down` changes nothing the second time.

This module is the pure part (plan = diff(what the mode needs, what the host
has)) plus a thin command-line shell; the kernel is behind ``RealServerHost``
(real one: backend/realserver_host.py, with a fake that behaves like the kernel).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Protocol, Sequence, TextIO

from .kernel import VipAddress
from .plan import ADD, DELETE, SET, Op, Plan

L2_DSR, L3_DSR = "l2-dsr", "l3-dsr"
MODES = (L2_DSR, L3_DSR)
LOOPBACK, TUNNEL, TUNNEL_MODULE = "lo", "tunl0", "ipip"
EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2

_ARP_ALL = {"net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2"}
_ARP_LO = {"net.ipv4.conf.lo.arp_ignore": "1", "net.ipv4.conf.lo.arp_announce": "2"}
_RP_OFF = {"net.ipv4.conf.all.rp_filter": "0", f"net.ipv4.conf.{TUNNEL}.rp_filter": "0"}

DOWN_NOTE = ("Left as they are: sysctls (arp_ignore, arp_announce, rp_filter), tunl0 and the "
             "ipip module; other VIPs may rely on them, and they do nothing without a VIP.")


def vip_interface(mode: str) -> str:
    """Where the VIP lives on a real server in ``mode``."""
    return LOOPBACK if mode == L2_DSR else TUNNEL


def required_sysctls(mode: str) -> dict[str, str]:
    """The sysctls ``mode`` needs, key -> value (order = the order they are written)."""
    if mode == L2_DSR:
        return {**_ARP_ALL, **_ARP_LO}
    return {**_ARP_ALL, **_RP_OFF}


@dataclass(frozen=True)
class HostObserved:
    """What a real server holds: every link (name -> up), every IPv4 address, some sysctls."""

    links: Mapping[str, bool] = field(default_factory=dict)
    addresses: frozenset[VipAddress] = frozenset()
    sysctls: Mapping[str, str] = field(default_factory=dict)


class RealServerHost(Protocol):
    """The kernel as `pask realserver` needs it (real: backend/realserver_host.py)."""

    def observe(self, sysctl_keys: Iterable[str]) -> HostObserved: ...

    def can_change(self) -> bool:
        """True when this process may change addresses and sysctls (root)."""

    def load_module(self, name: str) -> None: ...

    def set_link_up(self, name: str) -> None: ...

    def add_address(self, vip: VipAddress) -> None: ...

    def delete_address(self, vip: VipAddress) -> None: ...

    def write_sysctl(self, key: str, value: str) -> None: ...


class RealServerError(Exception):
    """Something `pask realserver` cannot do; the message says what and why."""


# -- pure core -------------------------------------------------------------------

def parse_vips(values: Iterable[str]) -> tuple[str, ...]:
    """Canonical IPv4 VIPs, duplicates dropped, order kept. ``A.B.C.D/32`` is accepted."""
    out: list[str] = []
    problems: list[str] = []
    for raw in values:
        text = raw.strip()
        if text.endswith("/32"):
            text = text[:-3]
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            problems.append(f"--vip {raw!r}: not an IP address (expected e.g. 10.99.100.1)")
            continue
        if addr.version != 4:
            problems.append(f"--vip {raw}: IPv6 VIPs are not supported by pask realserver "
                            "(IPv4 only: lo/tunl0 with /32)")
            continue
        if str(addr) not in out:
            out.append(str(addr))
    if problems:
        raise RealServerError("\n".join(problems))
    return tuple(out)


def plan_up(mode: str, vips: Sequence[str], observed: HostObserved) -> Plan:
    """Ops that make this host a real server for ``vips`` in ``mode``.

    Order matters: the module first (it creates tunl0), then links, then
    sysctls, and the VIP last, so the host never holds the VIP while it would
    still answer ARP for it.
    """
    iface = vip_interface(mode)
    ops: list[Op] = []
    if mode == L3_DSR and TUNNEL not in observed.links:
        ops.append(Op(ADD, "module", TUNNEL_MODULE, None, TUNNEL_MODULE, reason="creates tunl0"))
    if not observed.links.get(iface, False):
        before = "down" if iface in observed.links else None
        ops.append(Op(SET, "link", iface, before, "up"))
    for key, value in required_sysctls(mode).items():
        have = observed.sysctls.get(key)
        if have != value:
            ops.append(Op(SET, "sysctl", key, have, value))
    for vip in vips:
        want = VipAddress(iface, vip, 32)
        if want not in observed.addresses:
            ops.append(Op(ADD, "address", str(want), None, want))
    return Plan(tuple(ops))


def plan_down(vips: Sequence[str], observed: HostObserved, mode: str | None = None) -> Plan:
    """Ops that take the VIPs (/32 on lo / tunl0, or on ``mode``'s interface only) away."""
    interfaces = (vip_interface(mode),) if mode else (LOOPBACK, TUNNEL)
    ops = [Op(DELETE, "address", str(have), have, None)
           for vip in vips for iface in interfaces
           if (have := VipAddress(iface, vip, 32)) in observed.addresses]
    return Plan(tuple(ops))


def warnings_for(mode: str | None, vips: Sequence[str], observed: HostObserved) -> list[str]:
    """A VIP on any other link (eth0, ...) makes this host answer ARP for it: say so."""
    if mode is None:
        return []
    out = []
    for a in sorted(observed.addresses):
        if a.addr in vips and a.interface not in (LOOPBACK, TUNNEL):
            out.append(f"warning: {a.addr} is also on {a.interface} ({a.addr}/{a.prefixlen}): this "
                       f"host answers ARP for it there and takes the VIP's traffic away from the "
                       f"load balancer; remove it unless this host is meant to own the VIP")
    return out


def op_line(op: Op) -> str:
    """One plan line, in the same style as pask-apply's plan."""
    if op.kind == "link":
        was = op.before or "absent"
        return f"{op.symbol} link {op.key} {op.after} (was {was})"
    if op.kind == "module":
        why = f" ({op.reason})" if op.reason else ""
        return f"{op.symbol} module {op.key}{why}"
    from .render.text import op_line as apply_op_line
    return apply_op_line(op)


def plan_text(plan: Plan) -> str:
    from .render.text import summary
    lines = [op_line(op) for op in plan.ops]
    if plan.ops:
        lines.append(summary(plan))
    return "\n".join(lines) + ("\n" if lines else "")


def op_json(op: Op) -> dict:
    from .render.text import to_jsonable
    return {"action": op.action, "kind": op.kind, "key": op.key, "service": None,
            "before": to_jsonable(op.before), "after": to_jsonable(op.after), "reason": op.reason}


def outcome(command: str, mode: str | None, vips: Sequence[str], *, changed: bool,
            dry_run: bool) -> str:
    """The closing line an operator reads."""
    where = vip_interface(mode) if mode else "lo or tunl0"
    vip_list = ", ".join(vips)
    if command == "up":
        ready = f"this real server is ready for {mode} ({vip_list} on {where})"
    else:
        ready = f"{vip_list} no longer on {where}"
    if dry_run:
        return "Dry run: nothing was changed." if changed else f"No changes: {ready}."
    if not changed:
        return f"No changes: {ready}."
    return f"Applied and verified: {ready}."


# -- imperative shell ---------------------------------------------------------------

def execute(plan: Plan, host: RealServerHost, done: list[Op] | None = None) -> list[Op]:
    """Run the ops in order; stop at the first failure (re-running finishes the job).

    Appends each op done to ``done`` and returns it; a failure raises
    BackendError with ``.op`` set (``done`` then tells what had been changed).
    """
    from .backend.base import BackendError

    done = [] if done is None else done
    for op in plan.ops:
        try:
            if op.kind == "module":
                host.load_module(op.key)
            elif op.kind == "link":
                host.set_link_up(op.key)
            elif op.kind == "sysctl":
                host.write_sysctl(op.key, str(op.after))
            elif op.kind == "address" and op.action == ADD:
                host.add_address(op.after)
            elif op.kind == "address" and op.action == DELETE:
                host.delete_address(op.before)
            else:  # pragma: no cover - plan_up/plan_down make no other ops
                raise BackendError(f"unknown op {op.kind} {op.action}")
        except BackendError as e:
            e.op = op
            raise
        done.append(op)
    return done


def _hint(op: Op | None) -> str:
    if op is None:
        return ""
    if op.kind == "module":
        return (" (l3-dsr needs the ipip module for tunl0: install the kernel's modules "
                "package, or build ipip into the kernel)")
    if op.kind == "link" and op.key == TUNNEL:
        return (" (ipip is loaded but this network namespace has no tunl0: check "
                "net.core.fb_tunnels_only_for_init_net)")
    return ""


EPILOG = """\
examples:
  pask realserver up --vip 10.99.100.1 --mode l2-dsr         VIP on lo, ARP suppressed
  pask realserver up --vip 10.99.100.1 --mode l3-dsr         ipip, VIP on tunl0, rp_filter off
  pask realserver up --vip 10.99.100.1 --mode l2-dsr --dry-run   print the plan only
  pask realserver down --vip 10.99.100.1                     remove the VIP from lo / tunl0

exit: 0 ok (no changes with --detailed-exitcode), 2 changes (only with
--detailed-exitcode), 1 error. `down` removes the VIPs only: sysctls, tunl0 and
the ipip module are left as they are.
"""


def build_parser() -> argparse.ArgumentParser:
    from .cli import ArgParser   # usage errors exit 1: 2 means "changes"

    p = ArgParser(prog="pask realserver", description="Prepare a real server for L2 / L3 DSR "
                "(direct routing / ipip tunnelling), or undo it.", epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="{up,down}", required=True, parser_class=ArgParser)
    for name, what in (("up", "add the VIPs and the settings the mode needs"),
                       ("down", "remove the VIPs (sysctls, tunl0, ipip stay)")):
        s = sub.add_parser(name, help=what, description=what)
        s.add_argument("--vip", action="append", required=True, metavar="VIP",
                       help="a virtual IP (IPv4) served through the load balancer; repeatable")
        s.add_argument("--mode", choices=MODES, required=(name == "up"),
                       help="l2-dsr (VIP on lo) or l3-dsr (VIP on tunl0)"
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
    from .backend.base import BackendError

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
    keys = required_sysctls(mode) if args.command == "up" else {}
    try:
        host = host_factory()
        observed = host.observe(keys)
    except BackendError as e:
        return fail(f"cannot read this host's links, addresses and sysctls: {e}")

    plan = planner(observed)
    report.update(changed=plan.changed, ops=[op_json(o) for o in plan.ops],
                  counts=plan.counts(), plan_text=plan_text(plan))
    report["warnings"] = warnings_for(mode if args.command == "up" else None, vips, observed)
    if args.command == "down":
        report["notes"].append(DOWN_NOTE)
    for w in report["warnings"]:
        print(w, file=err)
    say(plan_text(plan))

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
            return fail(f"{op_line(e.op) if e.op else 'apply'}: failed: {e}{_hint(e.op)}; {applied}")
        try:
            remaining = planner(host.observe(keys))
        except BackendError as e:
            return fail(f"cannot verify: {e}")
        report["verified"] = not remaining.changed
        if remaining.changed:
            report["drift"] = [op_json(o) for o in remaining.ops]
            return fail("verify: this host still differs after apply:\n" + plan_text(remaining))

    say(outcome(args.command, mode, vips, changed=plan.changed, dry_run=args.dry_run))
    if args.command == "down" and plan.changed:
        say(DOWN_NOTE)
    return finish(EXIT_CHANGES if args.detailed_exitcode and plan.changed else EXIT_OK)


def _linux_host() -> RealServerHost:
    from .backend.realserver_host import LinuxRealServerHost
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
