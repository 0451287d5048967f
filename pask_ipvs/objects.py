"""Value types for kernel objects, shared by *desired* and *observed* state, and the
canonical forms of addresses they are keyed by.

These are pask's own types: netlink and nft wire formats never leave the
backends. Equality covers configuration only; counters live in separate
``*Stats`` values so that a busy service never looks changed (kube-proxy lesson).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import socket
from dataclasses import dataclass, field
from typing import Iterable, Mapping, NamedTuple

FWD_MASQ = "masq"        # IPVS NAT (masquerading)
FWD_ROUTE = "route"      # direct routing (L2 DSR)
FWD_TUNNEL = "tunnel"    # ipip tunnelling (L3 DSR)
FWD_METHODS = (FWD_MASQ, FWD_ROUTE, FWD_TUNNEL)

# IPVS service flags pask manages, by name (values in backend/ipvs_codec.py).
SVC_FLAGS = ("persistent", "sh-fallback", "sh-port", "mh-fallback", "mh-port", "one-packet")


def family_of(addr: str) -> int:
    """4 or 6: the one place pask tells an address's family from its text."""
    return 6 if ":" in addr else 4


def dotted_quad(text: str) -> bytes | None:
    """The 4 bytes of an IPv4 address written canonically ('10.99.0.1'), else None.

    A fast path for the common case: ``ipaddress`` parses each octet in Python
    (17% of loading 1024 x 32), inet_aton in C. Only text that inet_ntoa gives
    back unchanged counts, so inet_aton's laxer forms ('10.1', '010.0.0.1')
    still go to ``ipaddress``, which refuses them."""
    try:
        packed = socket.inet_aton(text)
    except (OSError, ValueError):       # ValueError: an embedded NUL
        return None
    return packed if socket.inet_ntoa(packed) == text else None


@functools.lru_cache(maxsize=1 << 12)
def canonical_address(text: str) -> str:
    """'fd00:0::1' -> 'fd00::1' (addresses are compared and keyed in this form).

    The cache is for addresses a config repeats (a pool of real servers behind many
    VIPs); 4096 entries, not 65536: a config of 33k distinct real servers kept an entry
    for each (~4 MB) for the whole run."""
    if dotted_quad(text) is not None:
        return text
    return str(ipaddress.ip_address(text))


def split_listen(text: str) -> tuple[str, str] | None:
    """ "host:port" or "[v6]:port" -> (host, port text); None when it has neither form."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        return (host, port) if sep and host else None
    host, sep, port = text.rpartition(":")
    return (host, port) if sep and host and ":" not in host else None


@functools.lru_cache(maxsize=1 << 12)
def canonical_network(text: str) -> str:
    """'10.0.0.0/8' stays; a plain address becomes a /32 or /128 network."""
    return str(ipaddress.ip_network(text, strict=True))


# The four IPVS value types below are NamedTuples, not dataclasses: observe, expand and
# diff make, hash and compare 34k of them at 1024 x 32, and a tuple does all three in C
# (2x faster to build, 3x to diff; docs/performance.md). Change a field with ``_replace``.

class ServiceKey(NamedTuple):
    """IPVS identifies a service by (af, protocol, addr, port) or by (af, fwmark)."""

    protocol: str            # "tcp" | "udp" | "sctp"; "" for an fwmark service
    addr: str                # VIP, canonical text; "" for an fwmark service
    port: int                # 0 for an fwmark service (or an all-ports persistent service)
    fwmark: int = 0
    af: int = 4

    @staticmethod
    def virtual(protocol: str, addr: str, port: int) -> "ServiceKey":
        return ServiceKey(protocol, canonical_address(addr), port, 0, family_of(addr))

    @staticmethod
    def mark(fwmark: int, af: int = 4) -> "ServiceKey":
        return ServiceKey("", "", 0, fwmark, af)

    def __str__(self) -> str:
        if self.fwmark:
            return f"fwmark {self.fwmark}/ipv{self.af}"
        host = f"[{self.addr}]" if self.af == 6 else self.addr
        return f"{host}:{self.port}/{self.protocol}"


class IpvsService(NamedTuple):
    key: ServiceKey
    scheduler: str                        # kernel scheduler name: rr, sh, mh, ... (never "sh-port")
    flags: frozenset[str] = frozenset()   # subset of SVC_FLAGS; "persistent" iff timeout > 0
    timeout: int = 0                      # persistence timeout in seconds
    netmask: int = 32                     # persistence prefix length (32 / 128 = per client)

    def __str__(self) -> str:
        extra = "".join(f" {f}" for f in sorted(self.flags - {"persistent"}))
        pers = f" persistent {self.timeout}s/{self.netmask}" if self.timeout else ""
        return f"{self.key} {self.scheduler}{extra}{pers}"


class DestKey(NamedTuple):
    service: ServiceKey
    addr: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.addr}]" if family_of(self.addr) == 6 else self.addr
        return f"{host}:{self.port}"


class IpvsDest(NamedTuple):
    service: ServiceKey
    addr: str
    port: int
    fwd: str = FWD_MASQ
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0

    @property
    def key(self) -> DestKey:
        return DestKey(self.service, self.addr, self.port)

    def __str__(self) -> str:
        return f"{self.key} {self.fwd} weight {self.weight}"


class Stats(NamedTuple):
    """IPVS's counters of a service or destination (a NamedTuple: a scrape at 1024 x 32
    builds 33k of them, and the dump decoder fills one from a single struct unpack)."""
    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0


class DestStats(NamedTuple):
    active_conns: int = 0
    inact_conns: int = 0
    persist_conns: int = 0
    stats: Stats = Stats()

    @property
    def connections(self) -> int:
        return self.active_conns + self.inact_conns


@dataclass
class IpvsObserved:
    """Everything in the kernel's IPVS table, pask's and foreign alike."""

    services: dict[ServiceKey, IpvsService] = field(default_factory=dict)
    dests: dict[DestKey, IpvsDest] = field(default_factory=dict)
    service_stats: dict[ServiceKey, Stats] = field(default_factory=dict)
    dest_stats: dict[DestKey, DestStats] = field(default_factory=dict)
    # service -> digest of its configuration and its dests' (counters left out), as the
    # backend's service_digests() gives it; None: this read could not make them. Each backend
    # digests its own representation, so they are not part of equality.
    service_digests: dict[ServiceKey, bytes] | None = field(default_factory=dict, compare=False)

    def dests_of(self, key: ServiceKey) -> list[IpvsDest]:
        return [d for d in self.dests.values() if d.service == key]

    def replaced(self, fresh: "IpvsObserved", keys: Iterable[ServiceKey]) -> "IpvsObserved":
        """This table with every trace of the services ``keys`` replaced by ``fresh`` (a read
        of just those services); a key ``fresh`` lacks has left the kernel. A new object:
        this one stays as it was (it may be the caller's)."""
        keys = set(keys)
        out = IpvsObserved(
            services={k: v for k, v in self.services.items() if k not in keys},
            dests={k: v for k, v in self.dests.items() if k.service not in keys},
            service_stats={k: v for k, v in self.service_stats.items() if k not in keys},
            dest_stats={k: v for k, v in self.dest_stats.items() if k.service not in keys},
        )
        if self.service_digests is None or fresh.service_digests is None:
            out.service_digests = None
        else:
            out.service_digests = {k: v for k, v in self.service_digests.items() if k not in keys}
            out.service_digests.update(fresh.service_digests)
        out.services.update(fresh.services)
        out.dests.update(fresh.dests)
        out.service_stats.update(fresh.service_stats)
        out.dest_stats.update(fresh.dest_stats)
        return out


NFT_FAMILY = "inet"
NFT_TABLE = "pask"


@dataclass(frozen=True)
class NftTable:
    """The whole ``inet pask`` table as the libnftables JSON commands that create it.

    ``commands`` is canonical JSON text (a list of ``{"add": {...}}`` objects for
    the table, its chains, sets/maps and rules). The digest names this content;
    the backend stores it as the table's comment so observe can tell which
    content the kernel holds without re-normalising the kernel's listing.
    """

    commands: str

    @staticmethod
    def from_commands(cmds: list[dict]) -> "NftTable":
        return NftTable(json.dumps(cmds, sort_keys=True, separators=(",", ":")))

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.commands.encode()).hexdigest()[:16]

    def command_list(self) -> list[dict]:
        return json.loads(self.commands)


@dataclass(frozen=True)
class NftObserved:
    """What the kernel holds for ``inet pask``: its comment (pask's digest) and a
    digest of the kernel's own listing (handles stripped), to detect hand edits."""

    comment: str
    listing_digest: str


@dataclass(frozen=True, order=True)
class VipAddress:
    interface: str
    addr: str
    prefixlen: int

    def __str__(self) -> str:
        return f"{self.addr}/{self.prefixlen} dev {self.interface}"


@dataclass(frozen=True)
class LinkObserved:
    name: str
    kind: str                 # "dummy", ...
    up: bool


class KernelModule(NamedTuple):
    """A kernel module with the parameters pask needs of it. Each value is a comma list
    the loaded module must include (ip_vs_ftp's ``ports``): a module loaded with more is
    fine, one loaded with less must be reloaded, since parameters are read at load."""

    name: str
    params: tuple[tuple[str, str], ...] = ()

    def param(self, key: str) -> str | None:
        return dict(self.params).get(key)

    def covers(self, want: "KernelModule") -> bool:
        """Whether this (loaded) module has every value ``want`` needs."""
        for key, value in want.params:
            have = set((self.param(key) or "").split(","))
            if not set(value.split(",")) <= have:
                return False
        return True

    def merged(self, want: "KernelModule") -> "KernelModule":
        """This module's parameters with ``want``'s values added (a reload keeps what others use)."""
        out = dict(self.params)
        for key, value in want.params:
            have = [v for v in (out.get(key) or "").split(",") if v]
            values = set(have) | set(value.split(","))
            out[key] = ",".join(sorted(values, key=lambda v: (len(v), v)))
        return KernelModule(self.name, tuple(sorted(out.items())))

    def __str__(self) -> str:
        return " ".join([self.name, *(f"{k}={v}" for k, v in self.params)])


class SyncDaemon(NamedTuple):
    """An IPVS connection-sync thread: ``master`` sends the connections this node serves
    over ``interface`` (multicast), ``backup`` takes in those of the peer. An HA node runs
    both, so whichever holds the addresses sends and the other keeps a warm copy."""

    state: str              # "master" | "backup"
    interface: str          # mcast_ifn: the peer link
    syncid: int             # 0..255; pask uses the VRRP router id

    def __str__(self) -> str:
        return f"{self.state} on {self.interface} syncid {self.syncid}"


class EngineFile(NamedTuple):
    path: str
    content: str
    mode: int = 0o644


class Engine(NamedTuple):
    """A daemon pask runs but does not write (keepalived, conntrackd): the files it reads,
    rendered by pask, and how to run it. Started when not running; reloaded when a file
    differs from what is on disk."""

    name: str
    files: tuple[EngineFile, ...]
    argv: tuple[str, ...]               # starts it as a daemon (forks, returns)
    foreground_argv: tuple[str, ...]    # runs it in the foreground (a systemd unit's command)
    reload: str = "hup"                 # "hup": SIGHUP re-reads the config; "restart"
    stale: tuple[str, ...] = ()         # files a killed instance leaves that block a start
    needs: tuple[str, ...] = ()         # other programs its scripts run (checked before a start)

    def digest(self) -> str:
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f.path}\0{f.mode:o}\0{f.content}\0".encode())
        return h.hexdigest()[:12]

    def __str__(self) -> str:
        return f"{self.name} (config {self.digest()})"


class EngineObserved(NamedTuple):
    name: str
    running: bool
    files: tuple[EngineFile, ...]       # the desired files as they are on disk ("" when absent)

    def __str__(self) -> str:
        state = "running" if self.running else "not running"
        return f"{self.name} ({state}, config {Engine(self.name, self.files, (), ()).digest()})"


@dataclass
class Desired:
    """What the kernel should hold, expanded from the model. Pure data."""

    services: dict[ServiceKey, IpvsService] = field(default_factory=dict)
    dests: dict[DestKey, IpvsDest] = field(default_factory=dict)
    owners: dict[ServiceKey, str] = field(default_factory=dict)   # key -> service name
    nft: NftTable | None = None
    vip_interface: str | None = None
    vips: frozenset[VipAddress] = frozenset()
    sysctls: dict[str, str] = field(default_factory=dict)        # "net.ipv4.ip_forward" -> "1"
    schedulers: frozenset[str] = frozenset()                      # kernel scheduler names needed
    modules: dict[str, KernelModule] = field(default_factory=dict)  # helper modules, load order
    module_users: dict[str, tuple[str, ...]] = field(default_factory=dict)  # module -> service names
    sync_daemons: frozenset[SyncDaemon] = frozenset()              # with ha: IPVS connection sync
    engines: dict[str, Engine] = field(default_factory=dict)      # with ha: start order
    # what earlier runs started (the state file) and this config no longer has: stopped
    retired_sync: frozenset[SyncDaemon] = frozenset()
    retired_engines: dict[str, Engine] = field(default_factory=dict)
    retired_vips: frozenset[VipAddress] = frozenset()              # pask's, to take back
    # bgp: services whose dests the kernel must list in one canonical order (the mh table
    # depends on it): key -> (dest key, table weight) in the order pask adds them
    canonical_dests: dict[ServiceKey, tuple[tuple[DestKey, int], ...]] = field(default_factory=dict)


@dataclass
class Observed:
    """What the kernel holds now (read by the backends), in the same types."""

    ipvs: IpvsObserved = field(default_factory=IpvsObserved)
    nft: NftObserved | None = None
    link: LinkObserved | None = None
    vips: frozenset[VipAddress] = frozenset()
    sysctls: Mapping[str, str] = field(default_factory=dict)
    modules: Mapping[str, KernelModule] = field(default_factory=dict)   # loaded, of those desired
    sync_daemons: frozenset[SyncDaemon] = frozenset()
    engines: Mapping[str, EngineObserved] = field(default_factory=dict)  # of those desired or pask's


# -- a real server for DSR (pask realserver) ---------------------------------------

LOOPBACK, TUNNEL, TUNNEL_MODULE = "lo", "tunl0", "ipip"     # where DSR VIPs live on a real server
TUNNEL6, TUNNEL6_MODULE = "ip6tnl0", "ip6_tunnel"            # the same for IPv6 VIPs (ip6ip6)


@dataclass(frozen=True)
class HostObserved:
    """What a real server holds: every link (name -> up), every IPv4 and IPv6 address, some sysctls."""

    links: Mapping[str, bool] = field(default_factory=dict)
    addresses: frozenset[VipAddress] = frozenset()
    sysctls: Mapping[str, str] = field(default_factory=dict)
