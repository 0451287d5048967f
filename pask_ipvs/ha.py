"""The active/standby pair (docs/design.md "ha"), pure: which node this is, where each
address floats, and what the engines must be.

pask programs IPVS and nftables the same way on both nodes (the standby is warm) and
never puts a service into keepalived's config: keepalived only moves addresses (every
VIP and the floating addresses), the kernel's IPVS sync daemon carries IPVS connections
and conntrackd the conntrack/NAT state. Both sync daemons (master and backup) run on
both nodes, so whichever node serves sends and the other takes in, with no switch on a
VRRP transition; conntrackd's caches are committed or resynced by keepalived's notify
script (render/ha.py).
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from .model import Config, Ha, HaNode
from .objects import Engine, SyncDaemon, VipAddress, canonical_address
from .render.ha import EnginePaths

ROLES = ("MASTER", "BACKUP", "FAULT", "STOP")


class NodeError(ValueError):
    """This host cannot be told apart as one of the pair's nodes."""


def find_node(ha: Ha, name: str | None, peer_link_addresses: Iterable[str]) -> HaNode:
    """The node this host is: ``--node NAME``, else the node whose address this host holds on
    peer_link. Either way its address must be on peer_link (VRRP and sync leave from it)."""
    held = {canonical_address(a) for a in peer_link_addresses}
    listing = ", ".join(f"{n.name} {n.address}" for n in ha.nodes)
    if name is not None:
        node = ha.node(name)
        if node is None:
            raise NodeError(f"--node {name}: the config's ha.nodes are {listing}")
        if node.address not in held:
            raise NodeError(f"node {name}'s address {node.address} is not on peer_link "
                            f"{ha.peer_link} (it holds {', '.join(sorted(held)) or 'no address'}): "
                            f"VRRP adverts and connection sync leave from it")
        return node
    mine = [n for n in ha.nodes if n.address in held]
    if len(mine) != 1:
        why = "none" if not mine else "both"
        raise NodeError(f"this host holds {why} of the nodes' addresses on peer_link {ha.peer_link} "
                        f"({listing}; it holds {', '.join(sorted(held)) or 'no address'}): "
                        f"give --node NAME, or put this node's address on {ha.peer_link}")
    return mine[0]


def peer_of(ha: Ha, node: HaNode) -> HaNode:
    return next(n for n in ha.nodes if n.name != node.name)


def floating(ha: Ha) -> list[VipAddress]:
    """The floating addresses, with their prefixes, on their interfaces."""
    return [VipAddress(f.interface, f.address, f.prefixlen) for f in ha.floating_addresses]


def vip_addresses(config: Config) -> list[VipAddress]:
    """Each VIP, as a host address, on the interface of the floating address whose network
    holds it, so the new master's gratuitous ARP moves it (validation refused a VIP in
    none). A VIP that is itself a floating address floats as that."""
    ha = config.ha
    assert ha is not None
    taken = {f.address for f in ha.floating_addresses}
    out = []
    for vip in dict.fromkeys(s.vip for s in config.services):
        if vip in taken:
            continue
        addr = ipaddress.ip_address(vip)
        home = next(f for f in ha.floating_addresses if addr in f.network)
        out.append(VipAddress(home.interface, vip, addr.max_prefixlen))
    return out


def tracked_interfaces(ha: Ha) -> list[str]:
    """The links whose loss makes a node give way (FAULT): those the addresses float on, the
    clients' and the real servers' sides. Not peer_link: losing it must not make both give up."""
    return sorted({f.interface for f in ha.floating_addresses} - {ha.peer_link})


def sync_daemons(ha: Ha) -> frozenset[SyncDaemon]:
    if not ha.sync_connections:
        return frozenset()
    syncid = ha.virtual_router_id
    return frozenset({SyncDaemon("master", ha.peer_link, syncid),
                      SyncDaemon("backup", ha.peer_link, syncid)})


def engines(config: Config, node: HaNode, paths: EnginePaths) -> dict[str, Engine]:
    """The engines in start order: conntrackd before keepalived, whose notify script
    commits conntrackd's cache on becoming MASTER."""
    from .render.ha import conntrackd_engine, keepalived_engine

    ha = config.ha
    assert ha is not None
    out: dict[str, Engine] = {}
    if ha.sync_connections:
        out["conntrackd"] = conntrackd_engine(ha, node, peer_of(ha, node), paths)
    out["keepalived"] = keepalived_engine(ha, node, peer_of(ha, node), floating(ha),
                                          vip_addresses(config), tracked_interfaces(ha), paths)
    return out


def read_role(paths: EnginePaths) -> tuple[str, float] | None:
    """The node's VRRP role and since when (epoch s), as keepalived's notify script last
    wrote them; None: never written (keepalived has not run here)."""
    try:
        with open(paths.role, encoding="ascii") as f:
            words = f.read().split()
    except (OSError, UnicodeDecodeError):
        return None
    if len(words) < 2 or words[0] not in ROLES:
        return None
    try:
        return words[0], float(words[1])
    except ValueError:
        return None


def ha_status(state_file: str, keepalived_running: bool | None) -> dict:
    """pask-status's view of the pair: this node's role; STOPPED when keepalived is not
    running (a stale role file says nothing then)."""
    role = read_role(EnginePaths.for_state_file(state_file))
    if keepalived_running is False:
        return {"role": "STOPPED", "since": None, "keepalived": "not running"}
    return {"role": role[0] if role else "UNKNOWN", "since": role[1] if role else None,
            "keepalived": "running" if keepalived_running else "unknown"}
