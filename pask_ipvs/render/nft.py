"""Render the ``inet pask`` nftables table (libnftables JSON) from the model.

Pure: no nftables import, no kernel. The backend loads the result in one
transaction (see backend/nft.py), so this module only has to say *what* the
table holds. Layout (every part only when some service needs it):

* ``prerouting`` (filter, priority mangle): dispatches packets to one regular
  chain per filtered service, in config order. A service chain returns on its
  exclude rules first, then its include rules set ``meta mark`` to the
  service's fwmark, copy it to ``ct mark`` and accept (first service wins).
  Runs of services whose include filters are all exact (host dst, protocol,
  one dst port) and do not overlap are dispatched by one verdict map lookup
  instead of a jump per service, so packets cost O(1) at thousands of services.
* ``helpers`` (filter, priority mangle + 10, after the marks are set): assigns
  the conntrack helper of a service's application (``ct helper`` objects:
  automatic assignment is off in current kernels) to exactly the traffic the
  service takes: its VIP, protocol and port, or its fwmark.
* ``ha_guard`` (filter, input, priority filter; only with ``ha:``): drops TCP
  to a both-NAT ``snat_ip`` that is neither SYN nor RST and has no conntrack
  entry. Just after a failover the servers' answers to the SNAT address reach
  the new master before conntrackd has committed their NAT state; without the
  guard the LB's own stack answers them with a RST and kills the connection,
  with it the server retransmits until the state is there
  (docs/kernel-facts.md "An active/standby pair").
* ``postrouting`` (nat, priority srcnat): first the expected flows of conntrack
  helpers (``ct status expected``, found by the ct mark they inherit from their
  service's first flow: FTP's passive data to ``snat_ip``, TFTP's answers to the
  VIP); then both-NAT and LAN-to-LAN SNAT of the
  traffic IPVS sends to the real servers, matched by the conntrack's original
  tuple (IPVS rewrites the packet itself). fwmark services are found by
  ``ct mark`` in named maps; VIP services by a verdict map on the original
  destination to one small chain per VIP (nft 1.0.6 cannot put
  ``ct original proto-dst`` into a concatenated map key).

Named sets/maps keep loading linear at 4096 services (docs/kernel-facts.md "nftables load time": one
anonymous map per service grows superlinearly).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ..model import Application, Filter, FilterAction, NatMode, PortRange, Service
from ..objects import NFT_FAMILY, NFT_TABLE, NftTable, canonical_address

PRIO_MANGLE = -150
PRIO_SRCNAT = 100
PRIO_HELPERS = PRIO_MANGLE + 10
CHAIN_PREROUTING = "prerouting"
CHAIN_HELPERS = "helpers"
CHAIN_POSTROUTING = "postrouting"
CHAIN_HA_GUARD = "ha_guard"
PRIO_FILTER = 0
SERVICE_CHAIN_PREFIX = "svc_"
_NAME_MAX = 48            # of the sanitized service part; nft allows 255, listings stay readable
_SAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class _Fam:
    """The per-address-family spellings of the same match."""

    version: int
    nfproto: str          # meta nfproto value
    payload: str          # payload protocol for saddr/daddr
    addr_type: str        # set/map type
    nat: str              # snat statement family

    @property
    def ct_daddr(self) -> dict:
        return {"ct": {"key": f"{self.payload} daddr", "dir": "original"}}


V4 = _Fam(4, "ipv4", "ip", "ipv4_addr", "ip")
V6 = _Fam(6, "ipv6", "ip6", "ipv6_addr", "ip6")


def _fam(version: int) -> _Fam:
    return V4 if version == 4 else V6


# -- JSON expression helpers ---------------------------------------------------

def _match(left: dict, right: object) -> dict:
    return {"match": {"op": "==", "left": left, "right": right}}


def _payload(proto: str, fld: str) -> dict:
    return {"payload": {"protocol": proto, "field": fld}}


def _meta(key: str) -> dict:
    return {"meta": {"key": key}}


_COUNTER = {"counter": None}
_ACCEPT = {"accept": None}
_RETURN = {"return": None}


@functools.lru_cache(maxsize=4096)
def _parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)


def _network(text: str, fam: _Fam, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    net = _parse_network(text)
    if net.version != fam.version:
        raise ValueError(f"{what} {text!r} is IPv{net.version}, the service is IPv{fam.version}")
    return net


def _addr_value(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> object:
    """A host as plain text, a network as an nft prefix."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _port_value(ports: PortRange) -> object:
    return ports.low if ports.low == ports.high else {"range": [ports.low, ports.high]}


def _nets_value(nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> object:
    return _addr_value(nets[0]) if len(nets) == 1 else {"set": [_addr_value(n) for n in nets]}


def _collapse(texts: Sequence[str], fam: _Fam, what: str) -> list:
    """Overlapping networks would be 'conflicting intervals' in an interval map."""
    return list(ipaddress.collapse_addresses(_network(t, fam, what) for t in texts))


# -- names -------------------------------------------------------------------

def service_chain_names(names: Sequence[str]) -> dict[str, str]:
    """Service name -> chain name: ``svc_`` + the name made safe for nft.

    A name that had to change (unsafe characters, too long) gets a short hash
    of the original so that ``web-1``/``web_1``/``web.1`` stay apart; any
    remaining clash gets a counter, in config order.
    """
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        safe = _SAFE.sub("_", name)[:_NAME_MAX]
        if safe != name:
            safe += "_" + hashlib.sha256(name.encode()).hexdigest()[:6]
        chain = SERVICE_CHAIN_PREFIX + safe
        n = 2
        while chain in used:
            chain = f"{SERVICE_CHAIN_PREFIX}{safe}_{n}"
            n += 1
        used.add(chain)
        out[name] = chain
    return out


def _vip_chain_name(fam: _Fam, vip: str) -> str:
    return f"snat{fam.version}_" + vip.replace(".", "_").replace(":", "_")


# -- builder -----------------------------------------------------------------

@dataclass
class _Builder:
    """Collects objects in the order a transaction needs: chains before the
    maps whose elements jump to them, maps before the rules that use them."""

    objects: list[dict] = field(default_factory=list)     # ct helpers
    chains: list[dict] = field(default_factory=list)
    sets: list[dict] = field(default_factory=list)
    rules: list[dict] = field(default_factory=list)

    def _obj(self, **kw: object) -> dict:
        return {"family": NFT_FAMILY, "table": NFT_TABLE, **kw}

    def chain(self, name: str, base: tuple[str, str, int] | None = None) -> None:
        obj = self._obj(name=name)
        if base:
            kind, hook, prio = base
            obj.update(type=kind, hook=hook, prio=prio, policy="accept")
        self.chains.append({"add": {"chain": obj}})

    def set(self, name: str, type_: object, elems: list, flags: Sequence[str] = ()) -> None:
        obj = self._obj(name=name, type=type_, elem=elems)
        if flags:
            obj["flags"] = list(flags)
        self.sets.append({"add": {"set": obj}})

    def map(self, name: str, type_: object, data: str, elems: list, flags: Sequence[str] = ()) -> None:
        obj = self._obj(name=name, type=type_, map=data, elem=elems)
        if flags:
            obj["flags"] = list(flags)
        self.sets.append({"add": {"map": obj}})

    def rule(self, chain: str, *expr: dict) -> None:
        self.rules.append({"add": {"rule": self._obj(chain=chain, expr=list(expr))}})

    def commands(self) -> list[dict]:
        table = {"add": {"table": {"family": NFT_FAMILY, "name": NFT_TABLE}}}
        return [table, *self.objects, *self.chains, *self.sets, *self.rules]

    def ct_helper(self, name: str, type_: str, protocol: str) -> None:
        self.objects.append({"add": {"ct helper": self._obj(
            name=name, type=type_, protocol=protocol, l3proto="inet")}})


# -- filters (prerouting) ------------------------------------------------------

def filter_matches(f: Filter, svc: Service) -> list[dict]:
    """The match expressions of one filter; a field left out matches anything.
    Ports need a protocol: the filter's, else the service's."""
    fam = _fam(svc.family)
    proto = f.protocol.value if f.protocol else None
    if proto is None and (f.src_port or f.dst_port):
        proto = svc.protocol.value
    out: list[dict] = []
    if f.src:
        out.append(_match(_payload(fam.payload, "saddr"), _addr_value(_network(f.src, fam, "filter src"))))
    if f.dst:
        out.append(_match(_payload(fam.payload, "daddr"), _addr_value(_network(f.dst, fam, "filter dst"))))
    if proto:
        out.append(_match(_meta("l4proto"), proto))
    if f.src_port:
        out.append(_match(_payload("th", "sport"), _port_value(f.src_port)))
    if f.dst_port:
        out.append(_match(_payload("th", "dport"), _port_value(f.dst_port)))
    return out


_Key = tuple[int, str, str, int]   # (family, host dst, protocol, dst port)


def dispatch_keys(svc: Service) -> list[_Key] | None:
    """The exact (dst, proto, port) keys that cover every include filter of
    ``svc``, or None when some include is broader (then it gets a jump of its own)."""
    keys: list[_Key] = []
    for f in svc.filters:
        if f.action is not FilterAction.INCLUDE:
            continue
        if not f.dst or not f.dst_port or f.dst_port.low != f.dst_port.high:
            return None
        net = _parse_network(f.dst)
        if net.prefixlen != net.max_prefixlen:
            return None
        proto = (f.protocol or svc.protocol).value
        key = (net.version, str(net.network_address), proto, f.dst_port.low)
        if key not in keys:
            keys.append(key)
    return keys


def _render_filters(b: _Builder, services: Sequence[Service], marks: Mapping[str, int],
                    chains: Mapping[str, str]) -> None:
    b.chain(CHAIN_PREROUTING, ("filter", "prerouting", PRIO_MANGLE))
    for svc in services:
        chain = chains[svc.name]
        mark = marks[svc.name]
        b.chain(chain)
        excludes = [f for f in svc.filters if f.action is FilterAction.EXCLUDE]
        includes = [f for f in svc.filters if f.action is FilterAction.INCLUDE]
        for f in excludes:
            b.rule(chain, *filter_matches(f, svc), _COUNTER, _RETURN)
        for f in includes:
            b.rule(chain, *filter_matches(f, svc), _COUNTER,
                   {"mangle": {"key": _meta("mark"), "value": mark}},
                   {"mangle": {"key": {"ct": {"key": "mark"}}, "value": _meta("mark")}},
                   _ACCEPT)

    # Dispatch in config order. A run of exact, pairwise disjoint services is
    # one verdict-map lookup: no packet can match two of them, so their order
    # inside the run does not matter.
    group: dict[_Key, str] = {}
    groups = 0

    def flush() -> None:
        nonlocal groups
        for fam in (V4, V6):
            elems = [[{"concat": [addr, proto, port]}, {"jump": {"target": chain}}]
                     for (ver, addr, proto, port), chain in group.items() if ver == fam.version]
            if not elems:
                continue
            name = f"dispatch{fam.version}_{groups}"
            b.map(name, [fam.addr_type, "inet_proto", "inet_service"], "verdict", elems)
            key = {"concat": [_payload(fam.payload, "daddr"), _meta("l4proto"), _payload("th", "dport")]}
            b.rule(CHAIN_PREROUTING, {"vmap": {"key": key, "data": "@" + name}})
        if group:
            groups += 1
            group.clear()

    for svc in services:
        keys = dispatch_keys(svc)
        if keys is None:
            flush()
            fam = _fam(svc.family)
            b.rule(CHAIN_PREROUTING, _match(_meta("nfproto"), fam.nfproto),
                   {"jump": {"target": chains[svc.name]}})
            continue
        if any(k in group for k in keys):
            flush()
        for k in keys:
            group[k] = chains[svc.name]
    flush()


# -- SNAT (postrouting) ----------------------------------------------------------

def _snat(fam: _Fam, addr: object) -> dict:
    return {"snat": {"family": fam.nat, "addr": addr}}


def _orig_port(svc: Service) -> list[dict]:
    """Match the service's VIP port on the original tuple (IPVS already
    rewrote the packet); nft needs the l4proto to type the port."""
    out = [_match(_meta("l4proto"), svc.protocol.value)]
    if svc.port:
        out.append(_match({"ct": {"key": "proto-dst", "dir": "original"}}, svc.port))
    return out


def _render_snat(b: _Builder, services: Sequence[Service], marks: Mapping[str, int]) -> None:
    post = CHAIN_POSTROUTING

    # fwmark services: by ct mark (set in prerouting) in named maps.
    for fam in (V4, V6):
        both = [[marks[s.name], canonical_address(s.snat_ip)] for s in services
                if s.uses_fwmark and s.family == fam.version and s.nat_mode is NatMode.BOTH_NAT]
        if both:
            name = f"snat_mark{fam.version}"
            b.map(name, "mark", fam.addr_type, both)
            b.rule(post, _match(_meta("nfproto"), fam.nfproto),
                   _snat(fam, {"map": {"key": {"ct": {"key": "mark"}}, "data": "@" + name}}))
    for fam in (V4, V6):
        l2l = [[{"concat": [_addr_value(net), marks[s.name]]}, canonical_address(s.vip)]
               for s in services
               if s.uses_fwmark and s.family == fam.version and s.nat_mode is NatMode.LAN_TO_LAN
               for net in _collapse(s.local_networks, fam, "local network")]
        if l2l:
            name = f"l2l_mark{fam.version}"
            b.map(name, [fam.addr_type, "mark"], fam.addr_type, l2l, flags=["interval"])
            key = {"concat": [_payload(fam.payload, "saddr"), {"ct": {"key": "mark"}}]}
            b.rule(post, _match(_meta("nfproto"), fam.nfproto),
                   _snat(fam, {"map": {"key": key, "data": "@" + name}}))

    # VIP services: per VIP, a chain with one rule per service (ports first:
    # IPVS prefers VIP:port over the all-ports VIP:0 service).
    by_vip: dict[tuple[int, str], list[Service]] = {}
    for s in services:
        if not s.uses_fwmark:
            by_vip.setdefault((s.family, canonical_address(s.vip)), []).append(s)
    vmaps: dict[int, list] = {4: [], 6: []}
    for (version, vip), svcs in by_vip.items():
        if not any(s.nat_mode.needs_snat for s in svcs):
            continue
        fam = _fam(version)
        chain = _vip_chain_name(fam, vip)
        b.chain(chain)
        vmaps[version].append([vip, {"jump": {"target": chain}}])
        all_ports_snat = {s.protocol for s in svcs if s.port == 0 and s.nat_mode.needs_snat}
        for s in sorted(svcs, key=lambda s: s.port == 0):
            if s.nat_mode is NatMode.BOTH_NAT:
                b.rule(chain, *_orig_port(s), _COUNTER, _snat(fam, canonical_address(s.snat_ip)))
                continue
            if s.nat_mode is NatMode.LAN_TO_LAN:
                nets = _collapse(s.local_networks, fam, "local network")
                b.rule(chain, *_orig_port(s), _match(_payload(fam.payload, "saddr"), _nets_value(nets)),
                       _COUNTER, _snat(fam, vip))
            if s.port and s.protocol in all_ports_snat:
                # This port is another service's: keep the all-ports SNAT off it.
                b.rule(chain, *_orig_port(s), _ACCEPT)

    fw_marks = sorted({marks[s.name] for s in services if s.uses_fwmark})
    if fw_marks and (vmaps[4] or vmaps[6]):
        # A connection IPVS gave to an fwmark service is not the VIP service's.
        b.set("marks", "mark", fw_marks)
        b.rule(post, _match({"ct": {"key": "mark"}}, "@marks"), _ACCEPT)
    for fam in (V4, V6):
        if vmaps[fam.version]:
            name = f"snat_vip{fam.version}"
            b.map(name, fam.addr_type, "verdict", vmaps[fam.version])
            b.rule(post, {"vmap": {"key": fam.ct_daddr, "data": "@" + name}})


# -- conntrack helpers (prerouting, after the marks) ------------------------------

# (application, service protocol) -> (ct helper object name, the kernel helper's name)
CT_HELPERS = {
    (Application.FTP, "tcp"): ("ftp", "ftp"),
    (Application.TFTP, "udp"): ("tftp", "tftp"),
    (Application.H323, "tcp"): ("q931", "Q.931"),       # call signalling; H.245 follows from it
    (Application.H323, "udp"): ("ras", "RAS"),          # gatekeeper registration, admission, status
}


def ct_helper_of(svc: Service) -> tuple[str, str] | None:
    return CT_HELPERS.get((svc.application, svc.protocol.value)) if svc.conntrack_helper else None


def _render_helpers(b: _Builder, services: Sequence[Service], marks: Mapping[str, int]) -> None:
    """The helper on the service's first flow, and (VIP services) the ct mark its expected
    flows inherit; an fwmark service's traffic carries its mark in ct mark already."""
    b.chain(CHAIN_HELPERS, ("filter", "prerouting", PRIO_HELPERS))
    made: set[str] = set()
    for svc in services:
        name, kernel_name = ct_helper_of(svc)         # type: ignore[misc]  # callers pass these only
        if name not in made:
            made.add(name)
            b.ct_helper(name, kernel_name, svc.protocol.value)
        if svc.uses_fwmark:
            b.rule(CHAIN_HELPERS, _match(_meta("mark"), marks[svc.name]), {"ct helper": name})
            continue
        fam = _fam(svc.family)
        match = [_match(_meta("nfproto"), fam.nfproto),
                 _match(_payload(fam.payload, "daddr"), canonical_address(svc.vip)),
                 _match(_meta("l4proto"), svc.protocol.value)]
        if svc.port:
            match.append(_match(_payload("th", "dport"), svc.port))
        b.rule(CHAIN_HELPERS, *match, {"ct helper": name},
               {"mangle": {"key": {"ct": {"key": "mark"}}, "value": marks[svc.name]}})


def expected_snat_address(svc: Service) -> str | None:
    """Where a helper's expected flows of ``svc`` are source-NATed to, so the other side
    sees the address it talks to (lan-to-lan FTP: only for clients in local_networks,
    ``_render_expected_snat``):

    * both-nat: snat_ip: the server sees the LB on FTP's passive data as on the control;
    * dest-nat, lan-to-lan: the VIP: TFTP's answer comes from a new port of the server,
      and the client must see it from the VIP; lan-to-lan FTP's passive data of a LAN
      client, as its control connection.

    A flow the helper's NAT half already translated (nf_nat_tftp, nf_nat_ftp's active
    data, nf_nat_h323's H.245) never reaches this rule."""
    if svc.nat_mode is NatMode.BOTH_NAT:
        return svc.snat_ip
    if svc.nat_mode in (NatMode.DEST_NAT, NatMode.LAN_TO_LAN):
        return svc.vip
    return None


def _lan_only(svc: Service) -> bool:
    """FTP in lan-to-lan: only LAN clients' data is NATed (others are served as dest-nat,
    where ip_vs_ftp alone carries the data)."""
    return svc.application is Application.FTP and svc.nat_mode is NatMode.LAN_TO_LAN


def _render_expected_snat(b: _Builder, services: Sequence[Service], marks: Mapping[str, int]) -> None:
    expected_status = {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "expected"}}
    for fam in (V4, V6):
        elems = [[marks[s.name], canonical_address(addr)] for s in services
                 if s.family == fam.version and not _lan_only(s) and (addr := expected_snat_address(s))]
        if elems:
            name = f"expected{fam.version}"
            b.map(name, "mark", fam.addr_type, elems)
            b.rule(CHAIN_POSTROUTING, _match(_meta("nfproto"), fam.nfproto), expected_status,
                   _COUNTER, _snat(fam, {"map": {"key": {"ct": {"key": "mark"}}, "data": "@" + name}}))
        lan = [[{"concat": [_addr_value(net), marks[s.name]]}, canonical_address(s.vip)]
               for s in services if s.family == fam.version and _lan_only(s)
               for net in _collapse(s.local_networks, fam, "local network")]
        if lan:
            name = f"expected_l2l{fam.version}"
            b.map(name, [fam.addr_type, "mark"], fam.addr_type, lan, flags=["interval"])
            key = {"concat": [_payload(fam.payload, "saddr"), {"ct": {"key": "mark"}}]}
            b.rule(CHAIN_POSTROUTING, _match(_meta("nfproto"), fam.nfproto), expected_status,
                   _COUNTER, _snat(fam, {"map": {"key": key, "data": "@" + name}}))


# -- HA: no RST for answers that beat conntrackd's commit -------------------------

def _render_ha_guard(b: _Builder, services: Sequence[Service]) -> None:
    vips = {canonical_address(s.vip) for s in services}
    for fam in (V4, V6):
        addrs = sorted({canonical_address(s.snat_ip) for s in services
                        if s.nat_mode is NatMode.BOTH_NAT and s.family == fam.version
                        and canonical_address(s.snat_ip) not in vips})
        if not addrs:
            continue
        if not any(c["add"]["chain"]["name"] == CHAIN_HA_GUARD for c in b.chains):
            b.chain(CHAIN_HA_GUARD, ("filter", "input", PRIO_FILTER))
        name = f"ha_snat{fam.version}"
        b.set(name, fam.addr_type, addrs)
        b.rule(CHAIN_HA_GUARD, _match(_meta("nfproto"), fam.nfproto),
               _match(_payload(fam.payload, "daddr"), "@" + name),
               _match(_meta("l4proto"), "tcp"),
               {"match": {"op": "!", "left": _payload("tcp", "flags"), "right": ["syn", "rst"]}},
               {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
               _COUNTER, {"drop": None})


# -- entry point ---------------------------------------------------------------

def render_table(services: Sequence[Service], fwmarks: Mapping[str, int],
                 ha: bool = False) -> NftTable | None:
    """The whole ``inet pask`` table for ``services``, or None when no service
    needs nftables (no filters, no both-NAT / LAN-to-LAN, no conntrack helper).

    ``fwmarks`` maps a filtered service's name to its IPVS fwmark (an explicit
    ``Service.fwmark`` is used when the name is missing). The table comment is
    not part of it: the backend stores ``NftTable.digest`` when it loads it.
    ``ha``: the node is one of a pair (the ``ha_guard`` chain).
    """
    filtered = [s for s in services if s.uses_fwmark]
    snat = [s for s in services if s.nat_mode.needs_snat]
    helped = [s for s in services if ct_helper_of(s) is not None]
    if not filtered and not snat and not helped:
        return None
    marks: dict[str, int] = {}
    for s in filtered + helped:
        mark = fwmarks.get(s.name, s.fwmark)
        if not mark:
            raise ValueError(f"service {s.name!r} has filters but no fwmark" if s.uses_fwmark else
                             f"service {s.name!r} has a conntrack helper but no ct mark")
        marks[s.name] = mark
    for s in snat:
        if s.nat_mode is NatMode.BOTH_NAT:
            if not s.snat_ip:
                raise ValueError(f"service {s.name!r} is both-nat without snat_ip")
            _network(s.snat_ip, _fam(s.family), f"service {s.name!r} snat_ip")
        if s.nat_mode is NatMode.LAN_TO_LAN and not s.local_networks:
            raise ValueError(f"service {s.name!r} is lan-to-lan without local_networks")
    b = _Builder()
    if filtered:
        _render_filters(b, filtered, marks, service_chain_names([s.name for s in filtered]))
    if helped:
        _render_helpers(b, helped, marks)
    if snat or helped:
        b.chain(CHAIN_POSTROUTING, ("nat", "postrouting", PRIO_SRCNAT))
    if helped:                         # first: an expected flow is no other rule's business
        _render_expected_snat(b, helped, marks)
    if snat:
        _render_snat(b, services, marks)
    if ha and snat:
        _render_ha_guard(b, snat)
    return NftTable.from_commands(b.commands())
