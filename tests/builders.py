"""Small builders for model objects, so core tests don't depend on YAML loading."""

from __future__ import annotations

from pask_ipvs.model import (
    Config, Filter, FilterAction, Health, NatMode, OnFailure, Persistence, Protocol,
    RealServer, ServerState, Service,
)


def rs(addr: str, port: int = 80, weight: int = 1, state: str = "enabled", explicit: bool = True):
    return RealServer(addr, port, weight, ServerState(state), explicit)


def svc(name: str = "web", vip: str = "10.99.100.1", port: int = 80,
        proto: str | Protocol = "tcp", mode: str | NatMode = "dest-nat", *,
        sched: str = "rr", servers=None, persistence=None, filters=(),
        on_failure: str | OnFailure = "inhibit", snat_ip=None, local_networks=(), fwmark=None,
        health: Health | None = None) -> Service:
    """A service as the model holds it; two real servers on ``port`` unless given.
    Enums or their values for proto, mode and on_failure; persistence as (timeout, netmask)."""
    if servers is None:
        servers = [rs("10.99.2.11", port), rs("10.99.2.12", port)]
    return Service(
        name=name, vip=vip, port=port, protocol=Protocol(proto), scheduler=sched,
        nat_mode=NatMode(mode), real_servers=tuple(servers), snat_ip=snat_ip,
        local_networks=tuple(local_networks),
        persistence=Persistence(*persistence) if persistence else None,
        filters=tuple(filters), health=health or Health(), on_failure=OnFailure(on_failure),
        fwmark=fwmark)


def include(**kw) -> Filter:
    return Filter(FilterAction.INCLUDE, **kw)


def exclude(**kw) -> Filter:
    return Filter(FilterAction.EXCLUDE, **kw)


def config(*services, vip_interface: str | None = "pask0", drain_timeout: int = 0) -> Config:
    return Config(services=tuple(services), vip_interface=vip_interface, drain_timeout=drain_timeout)


def many(n: int, m: int) -> Config:
    """n services x m real servers, addresses in 10.99.0.0/16."""
    services = []
    for i in range(n):
        vip = f"10.99.{128 + i // 250}.{1 + i % 250}"
        servers = [rs(f"10.99.{(i * m + j) // 250 % 120}.{1 + (i * m + j) % 250}", 8080)
                   for j in range(m)]
        services.append(svc(f"s{i}", vip, 80, servers=servers))
    return config(*services)


# -- config files as text ------------------------------------------------------------------

def yaml_service(i: int, servers: int = 3, indent: str = "  ", **extra) -> str:
    """Item ``i`` of a ``services:`` list in block style (VIP 10.99.128.i+1, servers 10.99.i.*)."""
    lines = [f"{indent}- name: svc-{i}", f"{indent}  vip: 10.99.128.{i + 1}", f"{indent}  port: 80"]
    lines += [f"{indent}  {k}: {v}" for k, v in extra.items()]
    lines.append(f"{indent}  real_servers:")
    lines += [f"{indent}    - {{address: 10.99.{i}.{j + 1}, port: 8080}}" for j in range(servers)]
    return "\n".join(lines) + "\n"


def yaml_config(n: int = 10, indent: str = "  ", head: str = "version: 1\n") -> str:
    return head + "services:\n" + "".join(yaml_service(i, indent=indent) for i in range(n))


# -- IPVS ops as the planner makes them (kind and key from the object) -----------------------

def _ipvs_kind(value) -> str:
    from pask_ipvs.objects import IpvsService
    return "service" if isinstance(value, IpvsService) else "dest"


def op_add(value):
    from pask_ipvs.plan import Op
    return Op("add", _ipvs_kind(value), str(value.key), None, value)


def op_set(before, after):
    from pask_ipvs.plan import Op
    return Op("set", _ipvs_kind(after), str(after.key), before, after)


def op_delete(value):
    from pask_ipvs.plan import Op
    return Op("delete", _ipvs_kind(value), str(value.key), value, None)
