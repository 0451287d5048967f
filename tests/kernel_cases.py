"""Fixture tables measured on the kernel: what it refuses, and with which errno.

The unit tests hold the fakes (pask_ipvs/backend/fake_*.py) to these tables; the
integration tests hold the real kernel to the same tables, so a fake that drifts
from the kernel fails somewhere.
"""

from __future__ import annotations

import errno

from pask_ipvs.objects import (
    FWD_MASQ, NFT_FAMILY, NFT_TABLE, IpvsDest, IpvsService, ServiceKey,
)
from pask_ipvs.plan import Op


def ipvs_conflicts(svc: IpvsService, dest: IpvsDest) -> dict[str, tuple[object, int]]:
    """Conflicting requests against a table that holds ``svc`` (an IPv4 service) and
    ``dest`` (one of its dests) -> (op, the errno Linux 6.1 answers). The unit tests
    hold the fake to this table and the VM integration test holds the kernel to it."""
    other_key = svc.key._replace(addr="10.99.255.254")
    other_svc = svc._replace(key=other_key)
    other_dest = dest._replace(addr="10.99.255.253")
    v6 = ServiceKey.virtual("tcp", "fd00::99", 80)
    return {
        "add existing service": (Op("add", "service", str(svc.key), None, svc), errno.EEXIST),
        "set missing service": (Op("set", "service", str(other_key), other_svc, other_svc), errno.ESRCH),
        "delete missing service": (Op("delete", "service", str(other_key), other_svc, None), errno.ESRCH),
        "add dest to missing service": (
            Op("add", "dest", "d", None, dest._replace(service=other_key)), errno.ESRCH),
        "delete dest of missing service": (
            Op("delete", "dest", "d", dest._replace(service=other_key), None), errno.ESRCH),
        "add existing dest": (Op("add", "dest", "d", None, dest), errno.EEXIST),
        "set missing dest": (Op("set", "dest", "d", other_dest, other_dest), errno.ENOENT),
        "delete missing dest": (Op("delete", "dest", "d", other_dest, None), errno.ENOENT),
        "unknown scheduler": (
            Op("add", "service", "s", None, IpvsService(ServiceKey.virtual("tcp", "10.99.255.252", 80),
                                                        "nosuchsched")), errno.ENOENT),
        "lower threshold above upper": (
            Op("add", "dest", "d", None, other_dest._replace(u_threshold=1, l_threshold=5)), errno.ERANGE),
        "ipv6 netmask 0": (
            Op("add", "service", "s", None, IpvsService(v6, "rr", frozenset({"persistent"}), 60, 0)),
            errno.EINVAL),
        "ipv6 netmask 129": (
            Op("add", "service", "s", None, IpvsService(v6, "rr", frozenset({"persistent"}), 60, 129)),
            errno.EINVAL),
        "ipv6 dest in ipv4 service, not tunnelled": (
            Op("add", "dest", "d", None, dest._replace(addr="fd00::98", fwd=FWD_MASQ)), errno.EINVAL),
    }


# -- what nft refuses, measured ----------------------------------------------------------
# Table contents that libnftables 1.0.6 + kernel refuse, with the errno, for
# tests that hold the fake to the real backend (the nft backend tests run each
# against both). Each starts with ``add table`` like a rendered table.

def _nft_refusals() -> dict[str, tuple[list[dict], int]]:
    p = {"family": NFT_FAMILY, "table": NFT_TABLE}
    table = {"add": {"table": {"family": NFT_FAMILY, "name": NFT_TABLE}}}

    def chain(name: str, **base: object) -> dict:
        return {"add": {"chain": {**p, "name": name, **base}}}

    def rule(ch: str, *expr: dict) -> dict:
        return {"add": {"rule": {**p, "chain": ch, "expr": list(expr)}}}

    pre = dict(type="filter", hook="prerouting", prio=-150, policy="accept")
    saddr = {"payload": {"protocol": "ip", "field": "saddr"}}
    snat = {"snat": {"family": "ip", "addr": "10.99.2.1"}}
    return {
        "rule in a missing chain": ([table, rule("nope", {"accept": None})], errno.ENOENT),
        "jump to a missing chain": ([table, chain("a"), rule("a", {"jump": {"target": "nope"}})],
                                    errno.ENOENT),
        "missing named set": ([table, chain("a"), rule("a", {"match": {
            "op": "==", "left": {"ct": {"key": "mark"}}, "right": "@nope"}}, {"accept": None})],
            errno.ENOENT),
        "verdict map to a missing chain": ([table, {"add": {"map": {
            **p, "name": "m", "type": "ipv4_addr", "map": "verdict",
            "elem": [["10.99.0.1", {"jump": {"target": "nope"}}]]}}}], errno.ENOENT),
        "snat reached from a filter chain": ([table, chain("x"), chain("pre", **pre), rule("x", snat),
                                              rule("pre", {"jump": {"target": "x"}})], errno.EOPNOTSUPP),
        "nat chain on the forward hook": ([table, chain("f", type="nat", hook="forward", prio=0,
                                                        policy="accept")], errno.EOPNOTSUPP),
        "jump loop": ([table, chain("a"), chain("b"), chain("pre", **pre),
                       rule("a", {"jump": {"target": "b"}}), rule("b", {"jump": {"target": "a"}}),
                       rule("pre", {"jump": {"target": "a"}})], errno.EMLINK),
        "unknown statement": ([table, chain("a"), rule("a", {"frobnicate": None})], errno.EINVAL),
        "match without right": ([table, chain("a"), rule("a", {"match": {"op": "==", "left": saddr}},
                                                         {"accept": None})], errno.EINVAL),
        "bad address": ([table, chain("a"), rule("a", {"match": {"op": "==", "left": saddr,
                                                                 "right": "10.99.300.1"}}, {"accept": None})],
                        errno.EINVAL),
        "IPv6 address in an ip snat": ([table, chain("n", type="nat", hook="postrouting", prio=100,
                                                     policy="accept"),
                                        rule("n", {"snat": {"family": "ip", "addr": "fd00::1"}})],
                                       errno.EINVAL),
        "invalid hook": ([table, chain("a", type="filter", hook="nohook", prio=0, policy="accept")],
                         errno.EINVAL),
        "prefix without flags interval": ([table, {"add": {"set": {
            **p, "name": "s", "type": "ipv4_addr", "elem": [{"prefix": {"addr": "10.99.0.0", "len": 16}}]}}}],
            errno.EINVAL),
        "overlapping intervals": ([table, {"add": {"set": {
            **p, "name": "s", "type": "ipv4_addr", "flags": ["interval"],
            "elem": [{"prefix": {"addr": "10.99.0.0", "len": 16}},
                     {"prefix": {"addr": "10.99.1.0", "len": 24}}]}}}], errno.EEXIST),
        "map key with two values": ([table, {"add": {"map": {
            **p, "name": "m", "type": "mark", "map": "ipv4_addr",
            "elem": [[1, "10.99.0.1"], [1, "10.99.0.2"]]}}}], errno.EEXIST),
        "set redeclared with another type": ([table, {"add": {"set": {**p, "name": "s", "type": "mark"}}},
                                              {"add": {"set": {**p, "name": "s", "type": "ipv4_addr"}}}],
                                             errno.EEXIST),
        "unknown protocol": ([table, {"add": {"set": {**p, "name": "s", "type": "inet_proto",
                                                      "elem": ["tcpx"]}}}], errno.EINVAL),
        "port out of range": ([table, {"add": {"set": {**p, "name": "s", "type": "inet_service",
                                                       "elem": [70000]}}}], errno.EINVAL),
        "concatenation arity": ([table, {"add": {"set": {**p, "name": "s", "type": ["ipv4_addr", "mark"],
                                                         "elem": [{"concat": ["10.99.0.1"]}]}}}],
                                errno.EINVAL),
        "ct helper of a type the kernel lacks": ([table, {"add": {"ct helper": {
            **p, "name": "h", "type": "nosuchhelper", "protocol": "udp", "l3proto": "inet"}}}],
            errno.ENOENT),
        "ct helper set to a missing object": ([table, chain("a"), rule("a", {"ct helper": "nope"})],
                                              errno.ENOENT),
        # refused by the shared guard before nft sees it (libnftables would load them)
        "rule without statements": ([table, chain("a"), {"add": {"rule": {**p, "chain": "a", "expr": []}}}],
                                    errno.EINVAL),
        "another table": ([table, {"add": {"table": {"family": "ip", "name": "other"}}}], errno.EPERM),
        "a delete command": ([table, {"delete": {"chain": {**p, "name": "a"}}}], errno.EINVAL),
        "the reserved digest chain": ([table, chain("digest")], errno.EINVAL),
    }


NFT_REFUSALS: dict[str, tuple[list[dict], int]] = _nft_refusals()
