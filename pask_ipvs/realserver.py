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

IPv6 VIPs go as /128, and need fewer settings (docs/kernel-facts.md "IPv6 DSR
real server"), verified with real IPv6 traffic in the VM:

* l2-dsr: the VIP on ``lo``. Linux answers neighbour solicitations only for
  addresses of the interface they arrive on, and picks an NS's source from the
  outgoing interface, so there is nothing like arp_ignore / arp_announce to set.
* l3-dsr: IPVS tunnels IPv6 in IPv6, so the ``ip6_tunnel`` module (it creates
  ``ip6tnl0`` in every network namespace), ``ip6tnl0`` up (its fallback tunnel
  takes ip6ip6 packets only while up), the VIP on ``ip6tnl0``. IPv6 has no
  rp_filter, and ``lo`` / ``ip6tnl0`` (NOARP) never run DAD, whatever accept_dad.

`down` removes the VIP addresses (/32 or /128 on ``lo`` / ``tunl0`` / ``ip6tnl0``) and
nothing else: sysctls, the tunnels and their modules stay as they are, because other VIPs
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

from .objects import (
    LOOPBACK, TUNNEL, TUNNEL6, TUNNEL6_MODULE, TUNNEL_MODULE, HostObserved, VipAddress, family_of,
)
from .plan import ADD, DELETE, SET, Op, Plan

L2_DSR, L3_DSR = "l2-dsr", "l3-dsr"
MODES = (L2_DSR, L3_DSR)

_ARP_ALL = {"net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2"}
_ARP_LO = {"net.ipv4.conf.lo.arp_ignore": "1", "net.ipv4.conf.lo.arp_announce": "2"}
_RP_OFF = {"net.ipv4.conf.all.rp_filter": "0", f"net.ipv4.conf.{TUNNEL}.rp_filter": "0"}

DOWN_NOTE = ("Left as they are: sysctls (arp_ignore, arp_announce, rp_filter), tunl0, ip6tnl0 "
             "and the ipip / ip6_tunnel modules; other VIPs may rely on them, and they do nothing "
             "without a VIP.")
_MODULE_OF = {TUNNEL: TUNNEL_MODULE, TUNNEL6: TUNNEL6_MODULE}
_HOST_PREFIX = {4: 32, 6: 128}


def vip_interface(mode: str, family: int = 4) -> str:
    """Where a VIP of ``family`` (4 or 6) lives on a real server in ``mode``."""
    if mode == L2_DSR:
        return LOOPBACK
    return TUNNEL6 if family == 6 else TUNNEL


def vip_address(mode: str, vip: str) -> VipAddress:
    """The address ``up`` puts on the host for ``vip``: /32 or /128 on the mode's interface."""
    family = family_of(vip)
    return VipAddress(vip_interface(mode, family), vip, _HOST_PREFIX[family])


def required_sysctls(mode: str, vips: Sequence[str] | None = None) -> dict[str, str]:
    """The sysctls ``mode`` needs for ``vips`` (default: IPv4 VIPs), key -> value (order =
    the order they are written). IPv6 VIPs need none."""
    if vips is not None and all(family_of(v) == 6 for v in vips):
        return {}
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
    """Canonical IPv4 and IPv6 VIPs, duplicates dropped, order kept. ``A.B.C.D/32`` and
    ``X::Y/128`` are accepted."""
    out: list[str] = []
    problems: list[str] = []
    for raw in values:
        text = raw.strip()
        host = ""
        if "/" in text:
            text, _, host = text.partition("/")
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            problems.append(f"--vip {raw!r}: not an IP address (expected e.g. 10.99.100.1 "
                            "or fd00:99:100::1)")
            continue
        if host and host != str(_HOST_PREFIX[addr.version]):
            problems.append(f"--vip {raw}: a VIP is one address (/{_HOST_PREFIX[addr.version]}), "
                            "not a network")
            continue
        if (addr.is_multicast or addr.is_unspecified or addr.is_loopback
                or (addr.version == 6 and addr.is_link_local)):
            problems.append(f"--vip {raw}: not a unicast address a load balancer can serve")
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
    wants = [vip_address(mode, vip) for vip in vips]
    interfaces = list(dict.fromkeys(w.interface for w in wants))   # tunl0 before ip6tnl0: --vip order
    ops: list[Op] = []
    for iface in interfaces:
        module = _MODULE_OF.get(iface)
        if module and iface not in observed.links:
            ops.append(Op(ADD, "module", module, None, module, reason=f"creates {iface}"))
    for iface in interfaces:
        if not observed.links.get(iface, False):
            before = "down" if iface in observed.links else None
            ops.append(Op(SET, "link", iface, before, "up"))
    for key, value in required_sysctls(mode, vips).items():
        have = observed.sysctls.get(key)
        if have != value:
            ops.append(Op(SET, "sysctl", key, have, value))
    for want in wants:
        if want not in observed.addresses:
            ops.append(Op(ADD, "address", str(want), None, want))
    return Plan(tuple(ops))


def plan_down(vips: Sequence[str], observed: HostObserved, mode: str | None = None) -> Plan:
    """Ops that take the VIPs (/32 or /128 on lo / tunl0 / ip6tnl0, or on ``mode``'s
    interface only) away."""
    ops = []
    for vip in vips:
        family = family_of(vip)
        interfaces = ((vip_interface(mode, family),) if mode
                      else (LOOPBACK, TUNNEL6 if family == 6 else TUNNEL))
        ops += [Op(DELETE, "address", str(have), have, None) for iface in interfaces
                if (have := VipAddress(iface, vip, _HOST_PREFIX[family])) in observed.addresses]
    return Plan(tuple(ops))


def warnings_for(mode: str | None, vips: Sequence[str], observed: HostObserved) -> list[str]:
    """A VIP on any other link (eth0, ...) makes this host answer ARP (IPv6: neighbour
    solicitations) for it: say so."""
    if mode is None:
        return []
    out = []
    for a in sorted(observed.addresses):
        if a.addr in vips and a.interface not in (LOOPBACK, TUNNEL, TUNNEL6):
            asks = "neighbour solicitations (NDP)" if family_of(a.addr) == 6 else "ARP"
            out.append(f"warning: {a.addr} is also on {a.interface} ({a.addr}/{a.prefixlen}): this "
                       f"host answers {asks} for it there and takes the VIP's traffic away from the "
                       f"load balancer; remove it unless this host is meant to own the VIP")
    return out


def outcome(command: str, mode: str | None, vips: Sequence[str], *, changed: bool,
            dry_run: bool) -> str:
    """The closing line an operator reads."""
    families = sorted({family_of(v) for v in vips})
    if mode:
        where = " and ".join(dict.fromkeys(vip_interface(mode, f) for f in families))
    else:
        where = " or ".join(["lo", *(TUNNEL6 if f == 6 else TUNNEL for f in families)])
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
        iface = next((i for i, m in _MODULE_OF.items() if m == op.label), TUNNEL)
        return (f" (l3-dsr needs the {op.label} module for {iface}: install the kernel's modules "
                f"package, or build {op.label} into the kernel)")
    if op.kind == "link" and op.label in _MODULE_OF:
        return (f" ({_MODULE_OF[op.label]} is loaded but this network namespace has no "
                f"{op.label}: check net.core.fb_tunnels_only_for_init_net)")
    if op.kind == "address" and op.after is not None and family_of(op.after.addr) == 6:
        return (f" (is IPv6 disabled on {op.after.interface}? check "
                f"net.ipv6.conf.{op.after.interface}.disable_ipv6)")
    return ""
