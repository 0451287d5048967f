"""Netlink and generic netlink, packed and parsed with ``struct`` (bytes in, bytes out).

The framing under the IPVS codec (ipvs_codec.py): message and attribute headers
(host byte order, attributes padded to 4 bytes), attribute building, walking a
receive buffer message by message, acks and the generic netlink controller's
family lookup (include/uapi/linux/netlink.h, genetlink.h). No sockets here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator, NamedTuple


NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10          # error acks carry only the failed message's header
NETLINK_EXT_ACK = 11

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH

NLA_F_NESTED = 1 << 15
NLA_F_NET_BYTEORDER = 1 << 14
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF
NLA_ALIGNTO = 4

NLMSG_HDR = struct.Struct("=IHHII")      # len, type, flags, seq, pid
GENL_HDR = struct.Struct("=BBH")         # cmd, version, reserved
MSG_HDR = struct.Struct("=IHHIIBBH")     # nlmsghdr + genlmsghdr, packed at once
NLA_HDR = struct.Struct("=HH")           # len, type
NLMSGERR = struct.Struct("=i")           # -errno (0 = ack), then the request's header

U16 = struct.Struct("=H")
U32 = struct.Struct("=I")
U64 = struct.Struct("=Q")
FLAGS_STRUCT = struct.Struct("=II")      # struct ip_vs_flags {flags, mask}

# Attribute sizes including their 4-byte header, before padding.
NLA_LEN_U16 = NLA_HDR.size + 2
NLA_LEN_U32 = NLA_HDR.size + 4
NLA_LEN_FLAGS = NLA_HDR.size + FLAGS_STRUCT.size
ADDR_LEN = 16                            # sizeof(union nf_inet_addr)
NLA_LEN_ADDR = NLA_HDR.size + ADDR_LEN

GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_VERSION = 1
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2


def pad(n: int) -> int:
    return (n + NLA_ALIGNTO - 1) & ~(NLA_ALIGNTO - 1)


def nla(attr_type: int, payload: bytes) -> bytes:
    """One attribute: header, payload, zero padding to 4 bytes."""
    length = NLA_HDR.size + len(payload)
    return NLA_HDR.pack(length, attr_type) + payload + b"\0" * (pad(length) - length)


def nla_u16(attr_type: int, value: int) -> bytes:
    return nla(attr_type, U16.pack(value))


def nla_u32(attr_type: int, value: int) -> bytes:
    return nla(attr_type, U32.pack(value))


def nla_be16(attr_type: int, value: int) -> bytes:
    return nla(attr_type, value.to_bytes(2, "big"))


def nla_str(attr_type: int, value: str) -> bytes:
    return nla(attr_type, value.encode() + b"\0")


def nla_nest(attr_type: int, *parts: bytes) -> bytes:
    return nla(attr_type | NLA_F_NESTED, b"".join(parts))


def message(msg_type: int, flags: int, seq: int, cmd: int, version: int, attrs: bytes) -> bytes:
    """nlmsghdr + genlmsghdr + attributes."""
    return MSG_HDR.pack(MSG_HDR.size + len(attrs), msg_type, flags, seq, 0, cmd, version, 0) + attrs


def encode_get_family(seq: int, name: str) -> bytes:
    """CTRL_CMD_GETFAMILY: resolve a generic netlink family name to its id."""
    return message(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, seq, CTRL_CMD_GETFAMILY,
                   CTRL_VERSION, nla_str(CTRL_ATTR_FAMILY_NAME, name))


class Header(NamedTuple):
    """One netlink message in a receive buffer: its header and where its payload lies.
    (A NamedTuple: one is made per received message, so it must be cheap.)"""

    type: int
    flags: int
    seq: int
    start: int          # first payload byte (after nlmsghdr)
    end: int            # one past the last payload byte


def iter_messages(buf: bytes | bytearray | memoryview, nbytes: int) -> Iterator[Header]:
    """Every netlink message in the first ``nbytes`` of ``buf`` (one recv() result)."""
    off = 0
    hdr_size = NLMSG_HDR.size
    while off + hdr_size <= nbytes:
        length, mtype, flags, seq, _pid = NLMSG_HDR.unpack_from(buf, off)
        if length < hdr_size or off + length > nbytes:
            raise ValueError(f"truncated netlink message at offset {off} (len {length})")
        yield Header(mtype, flags, seq, off + hdr_size, off + length)
        off += pad(length)


def parse_attrs(buf: bytes | bytearray | memoryview, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type -> (value start, value end) for the attributes in buf[start:end]."""
    out: dict[int, tuple[int, int]] = {}
    unpack = NLA_HDR.unpack_from
    hdr_size = NLA_HDR.size
    while start + hdr_size <= end:
        length, atype = unpack(buf, start)
        if length < hdr_size:
            break                         # malformed: stop rather than loop forever
        out[atype & NLA_TYPE_MASK] = (start + hdr_size, start + length)
        start += pad(length)
    return out


@dataclass(frozen=True)
class Ack:
    """An NLMSG_ERROR reply: ``errno`` 0 is a positive ack, else the kernel's errno."""

    seq: int
    errno: int


def decode_ack(buf: bytes | bytearray | memoryview, hdr: Header) -> Ack:
    (code,) = NLMSGERR.unpack_from(buf, hdr.start)
    return Ack(hdr.seq, -code)


def decode_family_id(buf: bytes | bytearray | memoryview, hdr: Header) -> int:
    """The family id in a CTRL_CMD_NEWFAMILY reply."""
    attrs = parse_attrs(buf, hdr.start + GENL_HDR.size, hdr.end)
    start, _ = attrs[CTRL_ATTR_FAMILY_ID]
    return U16.unpack_from(buf, start)[0]


def u16_at(buf, span: tuple[int, int]) -> int:
    return U16.unpack_from(buf, span[0])[0]


def u32_at(buf, span: tuple[int, int]) -> int:
    return U32.unpack_from(buf, span[0])[0]


def be16_at(buf, span: tuple[int, int]) -> int:
    return (buf[span[0]] << 8) | buf[span[0] + 1]


def asciiz_at(buf, span: tuple[int, int]) -> str:
    return bytes(buf[span[0]:span[1]]).split(b"\0", 1)[0].decode()


_DUMP_DONE_LEN = NLMSG_HDR.size + NLMSGERR.size


def dump_finished(buf, nbytes: int, seq: int) -> bool | None:
    """True when this recv() buffer ends dump ``seq`` (NLMSG_DONE last), None when it is
    an error reply for it, False when more is coming. Looks at the buffer's end only:
    the kernel puts NLMSG_DONE last in its skb, and an error reply alone."""
    if nbytes >= _DUMP_DONE_LEN:
        length, mtype, _flags, mseq, _pid = NLMSG_HDR.unpack_from(buf, nbytes - _DUMP_DONE_LEN)
        if length == _DUMP_DONE_LEN and mtype == NLMSG_DONE and mseq == seq:
            return True
    if nbytes >= NLMSG_HDR.size:
        _length, mtype, _flags, mseq, _pid = NLMSG_HDR.unpack_from(buf, 0)
        if mtype == NLMSG_ERROR and mseq == seq:
            return None
    return False
