"""The ``bgp:`` rules the schema cannot express (docs/design.md "bgp", "Validation").

Behind ECMP, several LBs serve one VIP, and a router may move a flow from one LB to
another at any time (an LB dies, leaves, joins). With ``takeover: true`` (the default)
the config asks that such a flow survive the move. That holds only when the reply
does not need the LB that saw the flow first (a DSR mode), the next LB picks the same
real server (scheduler ``mh`` over one canonical table) and accepts the flow
mid-stream (``sloppy_tcp``, set by pask). Every service that cannot is refused here,
with the reason and what to use instead.

Called by validate.semantic_issues with its checker (``add``, ``address``), so the
messages read like every other problem. Values the schema refused are skipped.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .errors import Lines, PathPart

Path = tuple[PathPart, ...]

DSR_MODES = ("l2-dsr", "l3-dsr")
MH = ("mh", "mh-port")
AS_TRANS = 23456           # RFC 6793: stands in for a 4-byte AS towards old speakers

# why a scheduler cannot give a moved flow the same server on the next LB
SCHEDULER_REASONS = {
    "sh": "sh hashes the client over 256 buckets that it deals out again, in the order of "
          "the kernel's server list, whenever a server comes, goes or changes weight: most "
          "flows change server with any change, and LBs that saw different changes disagree",
    "dh": "dh hashes the destination address, so every flow to a VIP goes to one real server",
}
STATEFUL = "picks by this LB's own state (its round-robin turn or its connection counts), so " \
           "the next LB picks another server for the same flow"
NAT_REASONS = {
    "dest-nat": "the real server answers through its own gateway, not necessarily through the "
                "LB that holds the flow's NAT state, and the next LB never sees the answers",
    "both-nat": "the real server answers to the snat_ip of the LB that translated the flow; "
                "when that LB dies its answers go nowhere, and the next LB has no NAT state",
    "lan-to-lan": "the LB translates the flow (as dest-nat, and source-NAT for LAN clients), so "
                  "its answers and its NAT state stay with the LB that saw it first",
}
INSTEAD = ("with bgp.takeover: true use l3-dsr, or l2-dsr where every LB shares the real "
           "servers' LAN, with scheduler mh or mh-port; or set bgp.takeover: false, and flows "
           "on a lost LB are reset")


def bgp_issues(data: dict, lines: Lines, checker: Any) -> None:
    """Add every problem of ``data['bgp']`` (and of services under it) to ``checker``."""
    bgp = data.get("bgp")
    if not isinstance(bgp, dict):
        return
    services = data.get("services") if isinstance(data.get("services"), list) else []
    if "ha" in data:
        checker.add(("bgp",), "bgp and ha cannot be used together: ha moves every VIP to the one "
                              "active node of a pair (VRRP), bgp announces them from every LB at "
                              "once (ECMP) (allowed: one of them)")
    _as_number(checker, ("bgp", "local_as"), bgp.get("local_as"))
    router_id = _router_id(checker, bgp.get("router_id"))
    vips = {}
    for i, svc in enumerate(services):
        if isinstance(svc, dict) and isinstance(svc.get("vip"), str):
            vip = _address(svc["vip"])
            if vip is not None:
                vips.setdefault(vip, i)
    families = _neighbors(checker, lines, bgp.get("neighbors"), router_id, vips, services)
    for i, svc in enumerate(services):
        if not isinstance(svc, dict):
            continue
        vip = _address(svc.get("vip")) if isinstance(svc.get("vip"), str) else None
        if vip is not None and families and vip.version not in families:
            checker.add(("services", i, "vip"),
                        f"VIP {vip} is IPv{vip.version} and no bgp neighbor is, so nothing could "
                        f"announce it (allowed: an IPv{vip.version} neighbor in bgp.neighbors, or "
                        f"a VIP of IPv{' or IPv'.join(str(f) for f in sorted(families))})")
        if bgp.get("takeover", True) is True:
            _takeover(checker, ("services", i), svc)


def _as_number(checker: Any, path: Path, value: object) -> None:
    if value == AS_TRANS and not isinstance(value, bool):
        checker.add(path, f"AS {AS_TRANS} is AS_TRANS, which stands in for 4-byte AS numbers "
                          "towards old BGP speakers (RFC 6793) and is never a real AS "
                          "(allowed: 1..4294967295 but 23456)")


def _router_id(checker: Any, value: object) -> ipaddress.IPv4Address | None:
    path: Path = ("bgp", "router_id")
    addr = checker.address(path, value, "BGP router id")
    if addr is None:
        return None
    if addr.version != 4:
        checker.add(path, f"{value} is an IPv6 address: a BGP router id is a 32-bit number written "
                          "as an IPv4 address, also for IPv6 sessions (allowed: an IPv4 address, "
                          "usually this LB's own address on its router link)")
        return None
    return addr


def _neighbors(checker: Any, lines: Lines, neighbors: object, router_id: object,
               vips: dict, services: list) -> set[int]:
    """Check each neighbor; the address families that have one."""
    families: set[int] = set()
    if not isinstance(neighbors, list):
        return families
    seen: dict[object, int] = {}
    for i, n in enumerate(neighbors):
        if not isinstance(n, dict):
            continue
        p: Path = ("bgp", "neighbors", i)
        _as_number(checker, p + ("as",), n.get("as"))
        addr = checker.address(p + ("address",), n.get("address"), "BGP neighbor address")
        if addr is None:
            continue
        families.add(addr.version)
        first = seen.setdefault(addr, i)
        if first != i:
            checker.add(p + ("address",), f"neighbor {addr} is already bgp.neighbors[{first}] "
                                          f"(line {lines.line(('bgp', 'neighbors', first, 'address'))})")
        elif addr == router_id:
            checker.add(p + ("address",), f"neighbor {addr} is this LB itself (its bgp.router_id): "
                                          "a neighbor is a router this LB peers with (allowed: the "
                                          "router's address on the link to this LB)")
        elif addr in vips:
            name = services[vips[addr]].get("name")
            checker.add(p + ("address",), f"neighbor {addr} is the VIP of service {name!r}, which "
                                          "this LB announces: a neighbor is a router this LB peers "
                                          "with (allowed: the router's address on the link to this LB)")
    return families


def _takeover(checker: Any, p: Path, svc: dict) -> None:
    """A service whose flows must survive a move to another LB."""
    mode = svc.get("nat_mode", "dest-nat")
    if mode in NAT_REASONS:
        where = p + ("nat_mode",) if "nat_mode" in svc else p
        checker.add(where, f"nat_mode {mode} cannot keep a flow that ECMP moves to another LB "
                           f"(bgp.takeover: true): {NAT_REASONS[mode]}; there is no shared return "
                           f"path ({INSTEAD})")
        return
    if mode not in DSR_MODES:
        return
    sched = svc.get("scheduler", "wlc")
    if not isinstance(sched, str):
        return
    if sched not in MH:
        where = p + ("scheduler",) if "scheduler" in svc else p
        reason = SCHEDULER_REASONS.get(sched.removesuffix("-port"), STATEFUL)
        shown = sched if "scheduler" in svc else f"{sched} (the default)"
        checker.add(where, f"scheduler {shown} cannot keep a flow that ECMP moves to another LB on "
                           f"its real server (bgp.takeover: true): {reason} (allowed: mh, or "
                           "mh-port: Maglev hashing over the same table on every LB)")
        return
    _mh_service(checker, p, svc, sched)


def _mh_service(checker: Any, p: Path, svc: dict, sched: str) -> None:
    if svc.get("on_failure") == "remove":
        checker.add(p + ("on_failure",),
                    "on_failure remove takes a failed server out of the mh table, and its return "
                    "puts it at the head of the kernel's server list, out of the one order every "
                    "LB builds its table from (with bgp.takeover: true use on_failure: inhibit, the "
                    "default, which keeps its slots and sends its flows on to the same other "
                    "server on every LB)")
    persistence = svc.get("persistence")
    if isinstance(persistence, dict):
        if sched == "mh-port":
            checker.add(p + ("scheduler",),
                        "mh-port with persistence: the first LB sends a client to the server of "
                        "its first connection (the persistence template), while the next LB has "
                        "no template and hashes each connection's ports (with persistence and "
                        "bgp.takeover: true use scheduler: mh, which hashes the client address)")
        mask = persistence.get("netmask")
        if mask is not None and mask not in ("255.255.255.255", 128):
            checker.add(p + ("persistence", "netmask"),
                        f"netmask {mask}: a client network goes to the server the first LB picked "
                        "for the first client of that network, while the next LB hashes each "
                        "client's own address (with bgp.takeover: true use netmask 255.255.255.255, "
                        "or 128 for IPv6)")
    if svc.get("application") == "ftp" and sched == "mh-port":
        checker.add(p + ("scheduler",),
                    "application ftp with mh-port: an FTP session's data connections come from "
                    "other ports than its control connection, so the next LB would hash them to "
                    "another server (with bgp.takeover: true use scheduler: mh)")
    servers = svc.get("real_servers")
    for j, rs in enumerate(servers if isinstance(servers, list) else ()):
        if isinstance(rs, dict) and rs.get("weight") == 0 and not isinstance(rs.get("weight"), bool):
            checker.add(p + ("real_servers", j, "weight"),
                        "weight 0 on an mh service behind bgp: the kernel keeps the table slots of "
                        "a server whose weight drops to 0 but gives none to a server added at 0, "
                        "so an LB started later would build another table (allowed: 1..65535; to "
                        "take a server out of service: state: disabled)")


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
