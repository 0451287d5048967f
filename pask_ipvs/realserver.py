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
has)) and the executor of that plan; the kernel is behind ``RealServerHost``
(real one: backend/realserver_host.py, with a fake that behaves like the kernel);
the command line is cli/realserver.py. Plans print as pask-apply's (render/text.py).
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Protocol, Sequence

from .objects import LOOPBACK, TUNNEL, TUNNEL_MODULE, HostObserved, VipAddress
from .plan import ADD, DELETE, SET, Op, Plan

L2_DSR, L3_DSR = "l2-dsr", "l3-dsr"
MODES = (L2_DSR, L3_DSR)

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
                host.load_module(op.label)
            elif op.kind == "link":
                host.set_link_up(op.label)
            elif op.kind == "sysctl":
                host.write_sysctl(op.label, str(op.after))
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


def hint(op: Op | None) -> str:
    if op is None:
        return ""
    if op.kind == "module":
        return (" (l3-dsr needs the ipip module for tunl0: install the kernel's modules "
                "package, or build ipip into the kernel)")
    if op.kind == "link" and op.label == TUNNEL:
        return (" (ipip is loaded but this network namespace has no tunl0: check "
                "net.core.fb_tunnels_only_for_init_net)")
    return ""
