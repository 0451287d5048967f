"""expand(model) -> Desired: what the kernel should hold, as pure data.

The one place where PAS-K concepts become kernel objects (docs/design.md "Mapping"
table): NAT modes -> IPVS forwarding methods + nft SNAT, filters -> fwmark
services, persistence -> IPVS persistent services, health -> weights.
"""

from __future__ import annotations

import ipaddress
from typing import Mapping

from .objects import (
    FWD_MASQ, FWD_ROUTE, FWD_TUNNEL, DestKey, Desired, IpvsDest, IpvsService, KernelModule,
    ServiceKey, VipAddress,
)
from .health_file import health_key
from .model import Application, Config, NatMode, OnFailure, RealServer, ServerState, Service

FWD_BY_MODE = {
    NatMode.DEST_NAT: FWD_MASQ,
    NatMode.BOTH_NAT: FWD_MASQ,
    NatMode.LAN_TO_LAN: FWD_MASQ,
    NatMode.L2_DSR: FWD_ROUTE,
    NatMode.L3_DSR: FWD_TUNNEL,
}

# pask's scheduler names that are a kernel scheduler plus a flag.
SCHED_FLAGS = {"sh-port": ("sh", "sh-port"), "mh-port": ("mh", "mh-port")}


def kernel_scheduler(name: str) -> tuple[str, frozenset[str]]:
    sched, flag = SCHED_FLAGS.get(name, (name, None))
    return sched, frozenset([flag]) if flag else frozenset()


def service_key(svc: Service, fwmarks: Mapping[str, int]) -> ServiceKey:
    if svc.uses_fwmark:
        return ServiceKey.mark(fwmarks[svc.name], svc.family)
    # build_model already canonicalised the addresses
    return ServiceKey(svc.protocol.value, svc.vip, svc.port, 0, svc.family)


def persistence_prefix(svc: Service) -> int:
    if svc.persistence is None:
        return 128 if svc.family == 6 else 32
    mask = svc.persistence.netmask
    if svc.family == 6:
        return int(mask)
    return ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen


def ipvs_service(svc: Service, key: ServiceKey) -> IpvsService:
    sched, flags = kernel_scheduler(svc.scheduler)
    timeout = svc.persistence.timeout if svc.persistence else 0
    if timeout:
        flags = flags | {"persistent"}
    return IpvsService(key, sched, frozenset(flags), timeout, persistence_prefix(svc))


def sysctls_for(config: Config) -> dict[str, str]:
    if not config.services:
        return {}
    out = {
        "net.ipv4.ip_forward": "1",
        # A deleted destination's connections are expired at once instead of
        # black-holed until they time out (kube-proxy sets this too).
        "net.ipv4.vs.expire_nodest_conn": "1",
    }
    modes = {s.nat_mode for s in config.services}
    if any(m.needs_snat for m in modes) or any(s.conntrack_helper for s in config.services):
        # nft SNAT of IPVS traffic, and conntrack helpers on it, need IPVS to keep conntrack
        out["net.ipv4.vs.conntrack"] = "1"
    if any(m.is_dsr for m in modes):
        out["net.ipv4.conf.all.accept_local"] = "1"
    if any(s.family == 6 for s in config.services):
        out["net.ipv6.conf.all.forwarding"] = "1"
    return dict(sorted(out.items()))


# application -> the conntrack helper modules (helper, then its NAT half) the LB loads for it.
# nft's `ct helper` object autoloads the helper, never its NAT half: both are loaded here.
CONNTRACK_HELPER_MODULES = {
    Application.FTP: ("nf_conntrack_ftp", "nf_nat_ftp"),
    Application.TFTP: ("nf_conntrack_tftp", "nf_nat_tftp"),
    Application.H323: ("nf_conntrack_h323", "nf_nat_h323"),
}
IPVS_FTP_MODULE = "ip_vs_ftp"


def ipvs_ftp(svc: Service) -> bool:
    """FTP through IPVS's own helper, ip_vs_ftp: it binds to NAT connections only."""
    return svc.application is Application.FTP and not svc.nat_mode.is_dsr


def modules_for(config: Config) -> tuple[dict[str, KernelModule], dict[str, tuple[str, ...]]]:
    """The helper modules the services need, in load order, and the services that need
    each. ip_vs_ftp takes the virtual ports it serves as a load-time parameter (``ports``),
    so the module carries them."""
    users: dict[str, list[str]] = {}
    for svc in config.services:
        if ipvs_ftp(svc):
            users.setdefault(IPVS_FTP_MODULE, []).append(svc.name)
    for svc in config.services:
        if svc.conntrack_helper:
            for name in CONNTRACK_HELPER_MODULES[svc.application]:
                users.setdefault(name, []).append(svc.name)
    out = {name: KernelModule(name) for name in users}
    if IPVS_FTP_MODULE in out:
        ports = sorted({s.port for s in config.services if ipvs_ftp(s)})
        out[IPVS_FTP_MODULE] = KernelModule(IPVS_FTP_MODULE, (("ports", ",".join(map(str, ports))),))
    return out, {name: tuple(names) for name, names in users.items()}


def expand(config: Config, fwmarks: Mapping[str, int],
           health: Mapping[str, bool] | None = None) -> Desired:
    """Desired kernel state for ``config``. ``fwmarks``: name -> mark for filtered services;
    ``health``: health_key -> up, from pask-healthd (missing = up)."""
    from .render.nft import render_table

    health = health or {}
    modules, module_users = modules_for(config)
    # with ha: keepalived holds every VIP (on the active node only); vip_interface then
    # only gives back the addresses earlier runs put there, as with vip_interface: null
    vip_interface = None if config.ha else config.vip_interface
    desired = Desired(vip_interface=vip_interface, sysctls=sysctls_for(config),
                      modules=modules, module_users=module_users)
    vips: set[VipAddress] = set()
    schedulers: set[str] = set()
    for svc in config.services:
        key = service_key(svc, fwmarks)
        ipvs_svc = ipvs_service(svc, key)
        desired.services[key] = ipvs_svc
        desired.owners[key] = svc.name
        schedulers.add(ipvs_svc.scheduler)
        fwd = FWD_BY_MODE[svc.nat_mode]
        keep_port = not svc.uses_fwmark          # dest_port, once per service
        dests = desired.dests
        for rs, weight in zip(svc.real_servers, _weights(svc, health)):
            if weight is None:
                continue
            port = rs.port if (keep_port or rs.explicit_port) else 0
            dests[DestKey(key, rs.address, port)] = IpvsDest(key, rs.address, port, fwd, weight)
        if vip_interface:
            vips.add(VipAddress(vip_interface, svc.vip,
                                128 if svc.family == 6 else 32))
    desired.vips = frozenset(vips)
    desired.schedulers = frozenset(schedulers)
    desired.nft = render_table(config.services, fwmarks, ha=config.ha is not None)
    if config.ha is not None:
        from .ha import sync_daemons
        desired.sync_daemons = sync_daemons(config.ha)
    if config.bgp is not None:
        from .bgp_expand import expand_bgp
        expand_bgp(config, desired)
    return desired


def dest_port(svc: Service, rs: RealServer) -> int:
    """The port IPVS holds for ``rs``: 0 under a fwmark service unless the config set one
    (the packet's own port is kept)."""
    return rs.port if (rs.explicit_port or not svc.uses_fwmark) else 0


def effective_weights(service: Service, up: Mapping[str, bool]) -> dict[tuple[str, int], int | None]:
    """(addr, port) -> weight the kernel should hold; None = the destination is absent.

    * disabled: weight 0 whatever its health (drain; health never moves it);
    * down: weight 0 with ``on_failure: inhibit`` (its connections drain),
      absent with ``remove``;
    * backup (sorry server): its weight only while no enabled server is up,
      else 0 (kept in the kernel, so its connections drain when the pool recovers);
    * a server missing from ``up`` counts as up (no health check, or not known yet).
    """
    return {(rs.address, rs.port): weight
            for rs, weight in zip(service.real_servers, _weights(service, up))}


def _weights(service: Service, up: Mapping[str, bool]) -> list[int | None]:
    """effective_weights as a list in the order of ``service.real_servers`` (expand's
    loop: no dict, and no health key made when nothing is known of any server's health)."""
    servers = service.real_servers
    if up:
        def is_up(rs) -> bool:
            return up.get(health_key(service.name, rs.address, rs.port), True)
        ups = [is_up(rs) for rs in servers]
    else:
        ups = [True] * len(servers)
    enabled, disabled, backup = ServerState.ENABLED, ServerState.DISABLED, ServerState.BACKUP
    pool_up = any(rs.state is enabled and ok for rs, ok in zip(servers, ups))
    failed = None if service.on_failure is OnFailure.REMOVE else 0
    out: list[int | None] = []
    for rs, ok in zip(servers, ups):
        state = rs.state
        if state is disabled:
            out.append(0)
        elif not ok:
            out.append(failed)
        elif state is backup:
            out.append(0 if pool_up else rs.weight)
        else:
            out.append(rs.weight)
    return out
