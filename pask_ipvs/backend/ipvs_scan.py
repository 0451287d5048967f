"""Service digests without decoding dests: the configuration bytes of every GET_DEST
reply found by one learned regex, and a digest per service over them (the no-op
fast path and pask-healthd's drift check compare these).
"""

from __future__ import annotations

import re
import socket
import struct
from itertools import groupby
from operator import attrgetter
from typing import Callable, Iterable, Mapping

from ..objects import IpvsDest, IpvsService, ServiceKey
from .netlink import (
    ADDR_LEN, GENL_HDR, NLA_F_NESTED, NLA_HDR, NLA_TYPE_MASK, iter_messages, pad, parse_attrs,
)
from .ipvs_codec import (
    AF_TO_WIRE, FWD_TO_WIRE, IPVS_CMD_ATTR_DEST, IPVS_DEST_ATTR_ACTIVE_CONNS, IPVS_DEST_ATTR_ADDR,
    IPVS_DEST_ATTR_ADDR_FAMILY, IPVS_DEST_ATTR_FWD_METHOD, IPVS_DEST_ATTR_INACT_CONNS,
    IPVS_DEST_ATTR_L_THRESH, IPVS_DEST_ATTR_PERSIST_CONNS, IPVS_DEST_ATTR_PORT,
    IPVS_DEST_ATTR_STATS, IPVS_DEST_ATTR_STATS64, IPVS_DEST_ATTR_U_THRESH, IPVS_DEST_ATTR_WEIGHT,
)


# Dest attributes that are not configuration: counters and stats (and the address
# family, which follows the counters on the kernels we know). A dest reply's
# configuration is every attribute before the first of these.
_DEST_RUNTIME_ATTRS = frozenset({
    IPVS_DEST_ATTR_ACTIVE_CONNS, IPVS_DEST_ATTR_INACT_CONNS, IPVS_DEST_ATTR_PERSIST_CONNS,
    IPVS_DEST_ATTR_STATS, IPVS_DEST_ATTR_STATS64, IPVS_DEST_ATTR_ADDR_FAMILY})


class DestConfigScanner:
    """Finds the configuration bytes of every GET_DEST reply in a receive buffer
    with one compiled regex (C speed), instead of a Python step per reply.

    The pattern is learned from the first reply: the header of each attribute
    before the counters (address, port, forwarding, weight, tunnel settings,
    thresholds: fixed sizes, fixed order on a given kernel) and the size of its
    value. A match is those attribute headers with their values, so a busy
    dest's counters never change what is found. ``observe`` checks that every
    reply it decodes was matched, so a kernel with another layout gets no
    digest rather than a wrong one.
    """

    def __init__(self) -> None:
        self.pattern: re.Pattern[bytes] | None = None
        self.attrs: tuple[tuple[int, int], ...] = ()     # the learned (nla_len, type) headers

    def learn(self, buf, nbytes: int, msg_type: int) -> bool:
        """Learn the pattern from the first dest reply (type ``msg_type``) in the buffer."""
        for hdr in iter_messages(buf, nbytes):
            if hdr.type != msg_type:
                continue
            top = parse_attrs(buf, hdr.start + GENL_HDR.size, hdr.end)
            span = top.get(IPVS_CMD_ATTR_DEST)
            if span is None:
                return False
            parts = []
            attrs = []
            at, end = span
            while at + NLA_HDR.size <= end:
                length, atype = NLA_HDR.unpack_from(buf, at)
                if length < NLA_HDR.size or atype & NLA_F_NESTED or \
                        atype & NLA_TYPE_MASK in _DEST_RUNTIME_ATTRS:
                    break
                padded = pad(length)
                attrs.append((length, atype))
                parts.append(re.escape(bytes(buf[at:at + NLA_HDR.size]))
                             + b".{%d}" % (padded - NLA_HDR.size))
                at += padded
            if not parts:
                return False
            self.pattern = re.compile(b"".join(parts), re.S)
            self.attrs = tuple(attrs)
            return True
        return False

    def scan(self, buf, nbytes: int) -> list[bytes]:
        return self.pattern.findall(buf, 0, nbytes) if self.pattern is not None else []

    def encoder(self) -> Callable[[int, list[IpvsDest]], list[bytes]] | None:
        """(service family, dests) -> the configuration bytes scan() finds in the kernel's
        replies for those dests, by the learned layout; None before a reply was learned,
        or when the layout has an attribute pask cannot write from an IpvsDest. It raises
        ValueError when a dest cannot be encoded: a forwarding method the kernel does not
        have, a number out of range, an address inet_pton refuses for the service's
        family (the address family is not part of the scanned bytes, so a dest of the
        other family is never vouched for by them). Desired addresses are canonical (the
        model's), so bytes equal to the kernel's decode to the very same text.

        One generated list comprehension per layout (as dataclasses and namedtuple
        generate code): a verify encodes every desired dest, 33k at 1024 x 32."""
        if self.pattern is None or not self.attrs:
            return None
        fmt, values = "=", []
        for length, atype in self.attrs:
            size = length - NLA_HDR.size
            code = _DEST_VALUE_CODES.get((atype, size))
            if code is None:
                return None
            fmt += "HH" + code + "x" * (pad(length) - length)
            values += [str(length), str(atype), _DEST_VALUE_EXPRS[atype]]
        if not set(_DEST_VALUE_EXPRS) - _DEST_TUNNEL_ATTRS <= {a for _, a in self.attrs}:
            return None                 # a layout without one of the fields pask writes
        namespace = {"pack": struct.Struct(fmt).pack, "pton": socket.inet_pton,
                     "htons": socket.htons, "fwds": FWD_TO_WIRE}
        exec(f"def encode_all(dests, family):\n"
             f"    return [pack({', '.join(values)}) for d in dests]\n", namespace)
        encode_all = namespace["encode_all"]

        def encode(af: int, dests: list[IpvsDest]) -> list[bytes]:
            try:
                return encode_all(dests, AF_TO_WIRE[af])
            except (OSError, KeyError, struct.error, OverflowError, TypeError) as exc:
                raise ValueError(f"cannot encode a dest of IPv{af}: {exc!r}") from None

        return encode


# The configuration attributes of a dest reply pask writes from an IpvsDest, and their
# value codes by (attribute, value size); the tunnel settings of kernels >= 5.2
# (IPVS_DEST_ATTR_TUN_TYPE, _TUN_PORT, _TUN_FLAGS) pask never sets, so the kernel holds
# its defaults there: ipip (0), port 0, no flags.
IPVS_DEST_ATTR_TUN_TYPE, IPVS_DEST_ATTR_TUN_PORT, IPVS_DEST_ATTR_TUN_FLAGS = 13, 14, 15
_DEST_TUNNEL_ATTRS = frozenset({IPVS_DEST_ATTR_TUN_TYPE, IPVS_DEST_ATTR_TUN_PORT,
                                IPVS_DEST_ATTR_TUN_FLAGS})
_DEST_VALUE_CODES = {
    (IPVS_DEST_ATTR_ADDR, ADDR_LEN): f"{ADDR_LEN}s",
    (IPVS_DEST_ATTR_PORT, 2): "H",              # big-endian: packed from htons()
    (IPVS_DEST_ATTR_FWD_METHOD, 4): "I",
    (IPVS_DEST_ATTR_WEIGHT, 4): "I",
    (IPVS_DEST_ATTR_U_THRESH, 4): "I",
    (IPVS_DEST_ATTR_L_THRESH, 4): "I",
    (IPVS_DEST_ATTR_TUN_TYPE, 1): "B",
    (IPVS_DEST_ATTR_TUN_PORT, 2): "H",
    (IPVS_DEST_ATTR_TUN_FLAGS, 2): "H",
}
# each attribute's value, as an expression of the dest ``d`` and its service's ``family``
# (inet_pton refuses an address of the other family; "16s" pads an IPv4 one with zeros,
# as the kernel's union nf_inet_addr holds it)
_DEST_VALUE_EXPRS = {
    IPVS_DEST_ATTR_ADDR: "pton(family, d.addr)",
    IPVS_DEST_ATTR_PORT: "htons(d.port)",
    IPVS_DEST_ATTR_FWD_METHOD: "fwds[d.fwd]",
    IPVS_DEST_ATTR_WEIGHT: "d.weight",
    IPVS_DEST_ATTR_U_THRESH: "d.u_threshold",
    IPVS_DEST_ATTR_L_THRESH: "d.l_threshold",
    IPVS_DEST_ATTR_TUN_TYPE: "0",
    IPVS_DEST_ATTR_TUN_PORT: "0",
    IPVS_DEST_ATTR_TUN_FLAGS: "0",
}


def service_digest(svc: IpvsService, dest_configs: list[bytes]) -> bytes:
    """A digest of one service's configuration and its dests' (in the kernel's order: with
    bgp the order of an mh service's list is part of what it holds, mh_order.py)."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    h.update(f"{svc.key!r}|{svc.scheduler}|{','.join(sorted(svc.flags))}|{svc.timeout}|"
             f"{svc.netmask}|{len(dest_configs)}|".encode())
    h.update(b"".join(dest_configs))
    return h.digest()


def expected_digests(services: Mapping[ServiceKey, IpvsService], dests: Iterable[IpvsDest],
                     encode: Callable[[int, list[IpvsDest]], list[bytes]]) -> dict[ServiceKey, bytes]:
    """service -> the service_digest of a kernel holding exactly ``services`` with ``dests``,
    each service's dests given in the order they were added: the kernel links a new dest
    at the head of its service's list and dumps the list from there, so the digest is
    made over them newest first. The dests' bytes are made by ``encode`` (service family,
    dests); a service with a dest ``encode`` refuses (ValueError) is left out. A dest of
    a service not in ``services`` is ignored."""
    grouped: dict[ServiceKey, list[IpvsDest]] = {key: [] for key in services}
    for key, group in groupby(dests, key=attrgetter("service")):   # a service's dests come together
        out = grouped.get(key)
        if out is not None:
            out += group
    # encoded one service at a time: only one service's bytes are alive at once (a cold
    # apply's verify encodes 33k dests at 1024 x 32)
    digests: dict[ServiceKey, bytes] = {}
    for key, svc in services.items():
        members = grouped[key]
        try:
            configs = encode(key.af, members) if members else []
        except ValueError:
            continue
        configs.reverse()
        digests[key] = service_digest(svc, configs)
    return digests
