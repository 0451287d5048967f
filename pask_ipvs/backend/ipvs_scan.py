"""Service digests without decoding dests: the configuration bytes of every GET_DEST
reply found by one learned regex, and a digest per service over them (the no-op
fast path and pask-healthd's drift check compare these).
"""

from __future__ import annotations

import re

from ..objects import IpvsService
from .netlink import (
    GENL_HDR, NLA_F_NESTED, NLA_HDR, NLA_TYPE_MASK, iter_messages, pad, parse_attrs,
)
from .ipvs_codec import (
    IPVS_CMD_ATTR_DEST, IPVS_DEST_ATTR_ACTIVE_CONNS, IPVS_DEST_ATTR_ADDR_FAMILY,
    IPVS_DEST_ATTR_INACT_CONNS, IPVS_DEST_ATTR_PERSIST_CONNS, IPVS_DEST_ATTR_STATS,
    IPVS_DEST_ATTR_STATS64,
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
            at, end = span
            while at + NLA_HDR.size <= end:
                length, atype = NLA_HDR.unpack_from(buf, at)
                if length < NLA_HDR.size or atype & NLA_F_NESTED or \
                        atype & NLA_TYPE_MASK in _DEST_RUNTIME_ATTRS:
                    break
                padded = pad(length)
                parts.append(re.escape(bytes(buf[at:at + NLA_HDR.size]))
                             + b".{%d}" % (padded - NLA_HDR.size))
                at += padded
            if not parts:
                return False
            self.pattern = re.compile(b"".join(parts), re.S)
            return True
        return False

    def scan(self, buf, nbytes: int) -> list[bytes]:
        return self.pattern.findall(buf, 0, nbytes) if self.pattern is not None else []


def service_digest(svc: IpvsService, dest_configs: list[bytes]) -> bytes:
    """A digest of one service's configuration and its dests' (in the kernel's order)."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    h.update(f"{svc.key!r}|{svc.scheduler}|{','.join(sorted(svc.flags))}|{svc.timeout}|"
             f"{svc.netmask}|{len(dest_configs)}|".encode())
    h.update(b"".join(dest_configs))
    return h.digest()
