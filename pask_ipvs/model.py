"""The validated configuration as typed, frozen values.

Everything after validation works on these types, never on the raw dict, so a
key's default and meaning are decided in exactly one place (``build_model`` below,
from the defaults in defaults.py).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from .defaults import (
    DEFAULT_APPLICATION, DEFAULT_DRAIN_TIMEOUT, DEFAULT_HA_ADVERT_INTERVAL, DEFAULT_HA_PREEMPT,
    DEFAULT_HA_PREEMPT_DELAY, DEFAULT_HA_SYNC_CONNECTIONS, DEFAULT_FTP_DSR_PERSISTENCE_TIMEOUT,
    DEFAULT_FTP_PASSIVE_PORTS, DEFAULT_HEALTH, DEFAULT_METRICS_PER_SERVER, DEFAULT_NAT_MODE, DEFAULT_NETMASK, DEFAULT_ON_FAILURE,
    DEFAULT_PROTOCOL, DEFAULT_SCHEDULER, DEFAULT_STATE, DEFAULT_VIP_INTERFACE, DEFAULT_WEIGHT,
    HEALTH_PARAMS,
)
from .bgp_config import Bgp, build_bgp
from .objects import canonical_address, canonical_network, family_of, split_listen


class Protocol(str, enum.Enum):
    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"


class NatMode(str, enum.Enum):
    DEST_NAT = "dest-nat"
    BOTH_NAT = "both-nat"
    L2_DSR = "l2-dsr"
    L3_DSR = "l3-dsr"
    LAN_TO_LAN = "lan-to-lan"

    @property
    def is_dsr(self) -> bool:
        return self in (NatMode.L2_DSR, NatMode.L3_DSR)

    @property
    def needs_snat(self) -> bool:
        return self in (NatMode.BOTH_NAT, NatMode.LAN_TO_LAN)


# The 15 PAS-K/IPVS methods, plus mh-port (mh with the port in the hash).
SCHEDULERS = (
    "rr", "wrr", "lc", "wlc", "sh", "sh-port", "dh", "sed", "nq",
    "lblc", "lblcr", "mh", "mh-port", "fo", "ovf", "twos",
)


class ServerState(str, enum.Enum):
    ENABLED = "enabled"
    DISABLED = "disabled"   # drain: weight 0, established connections go on
    BACKUP = "backup"       # sorry server: weight only while no enabled server is up


class OnFailure(str, enum.Enum):
    INHIBIT = "inhibit"     # weight 0, established connections drain
    REMOVE = "remove"       # destination deleted


class Application(str, enum.Enum):
    """An application protocol whose secondary flows (FTP data, TFTP transfers, H.245)
    must reach the real server of the flow that announced them."""

    NONE = "none"
    FTP = "ftp"
    TFTP = "tftp"
    H323 = "h323"


class FilterAction(str, enum.Enum):
    INCLUDE = "include"
    EXCLUDE = "exclude"


@dataclass(frozen=True)
class PortRange:
    low: int
    high: int

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


@dataclass(frozen=True)
class Filter:
    """A general match: a field left out (None) matches anything."""

    action: FilterAction
    protocol: Protocol | None = None
    src: str | None = None          # network in CIDR form, e.g. "10.0.0.0/8"
    dst: str | None = None
    src_port: PortRange | None = None
    dst_port: PortRange | None = None


@dataclass(frozen=True)
class Persistence:
    timeout: int                    # seconds
    netmask: str = "255.255.255.255"  # IPv4 dotted mask, or an IPv6 prefix length as text ("128")


@dataclass(frozen=True)
class Health:
    """A health check. ``params`` holds the type-specific keys (path, expect_status, ...)."""

    type: str = "none"              # tcp | http | https | udp | dns | script | none
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    port: int | None = None         # check port; default: the real server's port
    params: tuple[tuple[str, object], ...] = ()

    def param(self, name: str, default: object = None) -> object:
        for key, value in self.params:
            if key == name:
                return value
        return default


@dataclass(frozen=True, slots=True)      # 33k of them at 1024 x 32: no __dict__ each
class RealServer:
    address: str
    port: int                       # already defaulted to the service port
    weight: int = 1
    state: ServerState = ServerState.ENABLED
    explicit_port: bool = True      # False: port was defaulted (an fwmark service then keeps the packet's port)

    def __reduce__(self):
        """Pickled as its constructor's arguments (the config cache keeps 33k of them):
        slots' default __getstate__/__setstate__ pickle at a third of the speed."""
        return RealServer, (self.address, self.port, self.weight, self.state, self.explicit_port)


@dataclass(frozen=True)
class Service:
    name: str
    vip: str
    port: int
    protocol: Protocol
    scheduler: str
    nat_mode: NatMode
    real_servers: tuple[RealServer, ...]
    snat_ip: str | None = None
    local_networks: tuple[str, ...] = ()
    persistence: Persistence | None = None
    filters: tuple[Filter, ...] = ()
    health: Health = field(default_factory=Health)
    on_failure: OnFailure = OnFailure.INHIBIT
    fwmark: int | None = None       # explicit fwmark for a filtered service; else allocated
    application: Application = Application.NONE

    @property
    def family(self) -> int:
        return family_of(self.vip)

    @property
    def uses_fwmark(self) -> bool:
        return bool(self.filters)

    @property
    def conntrack_helper(self) -> bool:
        """Whether a conntrack helper on the LB follows this service's secondary flows:
        TFTP's and H.323's always; FTP's where the client's address is translated (IPVS's
        own ip_vs_ftp cannot bring the data flows into that NAT). The helper's expected
        flows inherit the service's ct mark, which is how pask's NAT rules find them."""
        if self.application in (Application.TFTP, Application.H323):
            return True
        return self.application is Application.FTP and self.nat_mode.needs_snat

    @property
    def needs_mark(self) -> bool:
        """A mark of its own: an fwmark service's, or the ct mark of a helper's flows."""
        return self.uses_fwmark or self.conntrack_helper


@dataclass(frozen=True)
class Metrics:
    """Where pask-healthd serves Prometheus metrics."""
    address: str                    # bind address, no brackets ("::1" for "[::1]:9640")
    port: int
    per_server: bool = True         # False: per-service series only (1024 x 32 is 33k series a metric)

    @property
    def listen(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


@dataclass(frozen=True)
class HaNode:
    name: str
    address: str                    # on peer_link: VRRP and conntrackd talk between these
    priority: int                   # 1..254; the higher one is MASTER when both start


@dataclass(frozen=True)
class FloatingAddress:
    """An address (with its prefix) that moves with the active node, as VIPs do."""
    address: str
    prefixlen: int
    interface: str

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_interface(f"{self.address}/{self.prefixlen}").network

    def __str__(self) -> str:
        return f"{self.address}/{self.prefixlen} on {self.interface}"


@dataclass(frozen=True)
class Ha:
    """An active/standby pair (docs/design.md "ha"): keepalived moves the addresses, the
    IPVS sync daemon and conntrackd carry the connections."""
    virtual_router_id: int
    peer_link: str
    nodes: tuple[HaNode, ...]
    floating_addresses: tuple[FloatingAddress, ...] = ()
    advert_interval: int = DEFAULT_HA_ADVERT_INTERVAL
    preempt: bool = DEFAULT_HA_PREEMPT
    preempt_delay: int = DEFAULT_HA_PREEMPT_DELAY
    sync_connections: bool = DEFAULT_HA_SYNC_CONNECTIONS

    def node(self, name: str) -> HaNode | None:
        return next((n for n in self.nodes if n.name == name), None)


@dataclass(frozen=True)
class Config:
    services: tuple[Service, ...]
    vip_interface: str | None = "pask0"
    drain_timeout: int = 0          # seconds a removed server drains at weight 0 before deletion; 0 = delete at once
    metrics: Metrics | None = None
    ha: Ha | None = None
    bgp: Bgp | None = None          # scale-out behind ECMP (bgp_config.py)
    source: str = "<config>"        # file name, for messages

    def service(self, name: str) -> Service:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)


# -- built from validated data ---------------------------------------------------------------------------

def port_range(value: int | str) -> PortRange:
    if isinstance(value, int):
        return PortRange(value, value)
    low, high = value.split("-")
    return PortRange(int(low), int(high))


def _health(raw: dict | None) -> Health:
    raw = raw or {}
    htype = raw.get("type", DEFAULT_HEALTH["type"])
    params = []
    for key, default in HEALTH_PARAMS[htype].items():
        value = raw.get(key, default)
        if value is None:
            continue
        if isinstance(value, list):
            value = tuple(value)
        params.append((key, value))
    port = raw.get("port")
    return Health(
        type=htype,
        interval=float(raw.get("interval", DEFAULT_HEALTH["interval"])),
        timeout=float(raw.get("timeout", DEFAULT_HEALTH["timeout"])),
        rise=int(raw.get("rise", DEFAULT_HEALTH["rise"])),
        fall=int(raw.get("fall", DEFAULT_HEALTH["fall"])),
        port=int(port) if port is not None else None,
        params=tuple(sorted(params)),
    )


def _filter(raw: dict) -> Filter:
    def opt(key, conv):
        value = raw.get(key)
        return conv(value) if value is not None else None

    return Filter(
        action=FilterAction(raw["action"]),
        protocol=opt("protocol", Protocol),
        src=opt("src", canonical_network),
        dst=opt("dst", canonical_network),
        src_port=opt("src_port", port_range),
        dst_port=opt("dst_port", port_range),
    )


# value -> member: an Enum call costs half a microsecond, and a big config has one per server
_SERVER_STATES = {state.value: state for state in ServerState}


def build_service(raw: dict) -> Service:
    vip = canonical_address(raw["vip"])
    family = family_of(vip)
    port = int(raw["port"])
    persistence = None
    if "persistence" in raw:
        p = raw["persistence"]
        netmask = p.get("netmask", DEFAULT_NETMASK[family])
        persistence = Persistence(timeout=int(p["timeout"]), netmask=str(netmask))
    application = Application(raw.get("application", DEFAULT_APPLICATION))
    nat_mode = NatMode(raw.get("nat_mode", DEFAULT_NAT_MODE))
    protocol = Protocol(raw.get("protocol", DEFAULT_PROTOCOL))
    filters = tuple(_filter(f) for f in raw.get("filters", ()))
    if ftp_over_dsr(application, nat_mode):
        filters, persistence = _ftp_dsr(vip, port, filters, persistence,
                                        raw.get("passive_ports", DEFAULT_FTP_PASSIVE_PORTS))
    states = _SERVER_STATES
    # one int object per distinct port: the YAML reader makes a new one for each server's
    # 8080 (33k of them at 1024 x 32)
    ports: dict[int, int] = {port: port}
    servers = tuple([
        RealServer(canonical_address(rs["address"]),
                   ports.setdefault(rs_port := int(rs.get("port", port)), rs_port),
                   int(rs.get("weight", DEFAULT_WEIGHT)),
                   states.get(rs.get("state", DEFAULT_STATE)) or ServerState(rs["state"]),
                   "port" in rs)
        for rs in raw.get("real_servers", ())
    ])
    return Service(
        name=raw["name"],
        vip=vip,
        port=port,
        protocol=protocol,
        scheduler=raw.get("scheduler", DEFAULT_SCHEDULER),
        nat_mode=nat_mode,
        real_servers=servers,
        snat_ip=canonical_address(raw["snat_ip"]) if "snat_ip" in raw else None,
        local_networks=tuple(canonical_network(n) for n in raw.get("local_networks", ())),
        persistence=persistence,
        filters=filters,
        health=_health(raw.get("health")),
        on_failure=OnFailure(raw.get("on_failure", DEFAULT_ON_FAILURE)),
        fwmark=int(raw["fwmark"]) if "fwmark" in raw else None,
        application=application,
    )


FTP_DATA_PORT = 20


def ftp_over_dsr(application: Application | str, nat_mode: NatMode | str) -> bool:
    """FTP in a DSR mode: an fwmark service of its own making (``_ftp_dsr``), filters given
    or not. Validation asks the same of raw values."""
    return application == Application.FTP and nat_mode in (NatMode.L2_DSR, NatMode.L3_DSR)


def _ftp_dsr(vip: str, port: int, filters: tuple[Filter, ...], persistence: Persistence | None,
             passive_raw: int | str) -> tuple[tuple[Filter, ...], Persistence]:
    """FTP in a DSR mode: no helper can follow the data connections (the LB never sees
    the server's replies), so one persistent fwmark service takes the control port,
    the active-mode data ports (the client's SYN-ACK to the server's data connection
    comes through the LB) and the servers' passive range: each client's data
    connections then land on the server that holds its control session.

    Filters the config gave stay (excludes included); without them the service's own
    VIP and port are the implicit include, as for any service."""
    passive = port_range(passive_raw)
    dst = canonical_network(vip)
    includes = [f for f in filters if f.action is FilterAction.INCLUDE]
    if not includes:
        includes = [Filter(FilterAction.INCLUDE, Protocol.TCP, dst=dst, dst_port=PortRange(port, port))]
    # active data comes from the control port - 1 (RFC 959), and from 20 whatever the
    # control port with vsftpd and most servers (ftp_data_port): the client's answer to
    # it must reach the same server
    data = [Filter(FilterAction.INCLUDE, Protocol.TCP, dst=dst, dst_port=PortRange(p, p))
            for p in sorted({FTP_DATA_PORT, port - 1})]
    data.append(Filter(FilterAction.INCLUDE, Protocol.TCP, dst=dst, dst_port=passive))
    excludes = [f for f in filters if f.action is FilterAction.EXCLUDE]
    if persistence is None:
        persistence = Persistence(timeout=DEFAULT_FTP_DSR_PERSISTENCE_TIMEOUT,
                                  netmask=DEFAULT_NETMASK[family_of(vip)])
    return tuple(excludes + includes + data), persistence


def build_model(data: dict, source: str) -> Config:
    """Validated data -> Config with every default applied. Call only on data that validated."""
    return Config(
        services=tuple(build_service(s) for s in data["services"]),
        vip_interface=data.get("vip_interface", DEFAULT_VIP_INTERFACE),
        drain_timeout=int(data.get("drain_timeout", DEFAULT_DRAIN_TIMEOUT)),
        metrics=build_metrics(data.get("metrics")),
        ha=build_ha(data.get("ha")),
        bgp=build_bgp(data.get("bgp")),
        source=source,
    )


def build_ha(raw: dict | None) -> Ha | None:
    if raw is None:
        return None
    floating = []
    for f in raw.get("floating_addresses", ()):
        addr, _, prefix = f["address"].partition("/")
        floating.append(FloatingAddress(canonical_address(addr), int(prefix), f["interface"]))
    return Ha(
        virtual_router_id=int(raw["virtual_router_id"]),
        peer_link=raw["peer_link"],
        nodes=tuple(HaNode(n["name"], canonical_address(n["address"]), int(n["priority"]))
                    for n in raw["nodes"]),
        floating_addresses=tuple(floating),
        advert_interval=int(raw.get("advert_interval", DEFAULT_HA_ADVERT_INTERVAL)),
        preempt=bool(raw.get("preempt", DEFAULT_HA_PREEMPT)),
        preempt_delay=int(raw.get("preempt_delay", DEFAULT_HA_PREEMPT_DELAY)),
        sync_connections=bool(raw.get("sync_connections", DEFAULT_HA_SYNC_CONNECTIONS)),
    )


def build_metrics(raw: dict | None) -> Metrics | None:
    if raw is None:
        return None
    host, port = split_listen(raw["listen"])  # type: ignore[misc]  # validated
    return Metrics(address=canonical_address(host), port=int(port),
                   per_server=bool(raw.get("per_server", DEFAULT_METRICS_PER_SERVER)))
