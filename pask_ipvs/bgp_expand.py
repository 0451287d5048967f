"""What ``bgp:`` adds to the expanded kernel state (desired.expand calls it; the why is
in pask_ipvs/bgp.py): the sloppy sysctls, mh-fallback on every mh service, and the
canonical order, with table weights, of the mh services' destinations (mh_order.py)."""

from __future__ import annotations

import socket

from .model import Config, NatMode, Protocol
from .objects import Desired

MH_SCHEDULERS = ("mh",)                 # kernel scheduler names (mh-port is mh + a flag)


def sysctls(config: Config) -> dict[str, str]:
    """With takeover: an LB accepts a DSR flow it never saw start (ECMP moved it here)."""
    bgp = config.bgp
    if bgp is None or not bgp.takeover:
        return {}
    dsr = [s for s in config.services if s.nat_mode in (NatMode.L2_DSR, NatMode.L3_DSR)]
    out = {}
    if any(s.protocol is Protocol.TCP for s in dsr):
        out["net.ipv4.vs.sloppy_tcp"] = "1"
    if any(s.protocol is Protocol.SCTP for s in dsr):
        out["net.ipv4.vs.sloppy_sctp"] = "1"
    return out


def expand_bgp(config: Config, desired: Desired) -> None:
    """What bgp adds to the expanded state: the sloppy sysctls, mh-fallback on every mh
    service, and the canonical order (with table weights) of the mh services' dests."""
    if config.bgp is None:
        return
    extra = sysctls(config)
    if extra:
        desired.sysctls = dict(sorted({**desired.sysctls, **extra}.items()))
    weights = {}
    for svc in config.services:
        for rs in svc.real_servers:
            weights[(svc.name, rs.address, rs.port)] = rs.weight
    for key, svc in list(desired.services.items()):
        if svc.scheduler not in MH_SCHEDULERS:
            continue
        desired.services[key] = svc._replace(flags=svc.flags | {"mh-fallback"})
        name = desired.owners[key]
        config_svc = config.service(name)
        table = []
        for dkey, dest in desired.dests.items():
            if dkey.service != key:
                continue
            rs_port = _config_port(config_svc, dest.addr, dest.port)
            table.append((dkey, weights.get((name, dest.addr, rs_port), dest.weight)))
        table.sort(key=lambda item: (address_order(item[0].addr), item[0].port))
        desired.canonical_dests[key] = tuple(table)


def _config_port(svc, addr: str, port: int) -> int:
    """The config's port of a real server whose dest port is ``port`` (0 on an fwmark
    service that keeps the packet's port)."""
    if port:
        return port
    return next((rs.port for rs in svc.real_servers if rs.address == addr), port)


def address_order(addr: str) -> bytes:
    """Addresses by their bytes: IPv4 before IPv6, 10.99.5.9 before 10.99.5.10."""
    if ":" in addr:
        return b"\x06" + socket.inet_pton(socket.AF_INET6, addr)
    return b"\x04" + socket.inet_pton(socket.AF_INET, addr)
