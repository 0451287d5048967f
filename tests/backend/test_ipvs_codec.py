"""The IPVS netlink codec: golden bytes, round trips, pyroute2 as an independent
decoder/encoder, error acks, and the flag / forwarding / netmask mappings."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pask_ipvs.backend import ipvs_codec as w, ipvs_layout as layout, ipvs_scan as scan, netlink as nl
from pask_ipvs.objects import DestStats, IpvsDest, IpvsService, ServiceKey, Stats
from pask_ipvs.plan import Op

FAMILY = 0x25    # any generic netlink family id; the kernel picks one at boot

VIP = ServiceKey.virtual("tcp", "10.99.0.1", 80)
SVC = IpvsService(VIP, "sh", frozenset({"persistent", "sh-port"}), 300, 24)
DEST = IpvsDest(VIP, "10.99.1.1", 8080, "route", 3, 10, 2)


def _hex(*parts: str) -> bytes:
    return bytes.fromhex("".join(p.replace(" ", "") for p in parts))


# --------------------------------------------------------------------------
# golden bytes (the same layout the 6.1 kernel accepted in the VM)

GOLDEN_NEW_SERVICE = _hex(
    "68000000 2500 0100 07000000 00000000",     # nlmsghdr: len 104, family, REQUEST, seq 7
    "01 01 0000",                               # genl: NEW_SERVICE, version 1
    "5400 0180",                                # nested IPVS_CMD_ATTR_SERVICE
    "0600 0100 0200 0000",                      # AF = AF_INET
    "0600 0200 0600 0000",                      # PROTOCOL = TCP
    "1400 0300 0a630001 000000000000000000000000",  # ADDR, 16 bytes
    "0600 0400 0050 0000",                      # PORT 80, big-endian
    "0700 0600 736800 00",                      # SCHED_NAME "sh\0"
    "0c00 0700 11000000 ffffffff",              # FLAGS persistent|sched2, mask all
    "0800 0800 2c010000",                       # TIMEOUT 300
    "0800 0900 ffffff00",                       # NETMASK /24 as mask bytes
)

GOLDEN_NEW_DEST = _hex(
    "8c000000 2500 0100 08000000 00000000",     # nlmsghdr: len 140, seq 8
    "05 01 0000",                               # genl: NEW_DEST
    "3000 0180",                                # nested service key
    "0600 0100 0200 0000",
    "0600 0200 0600 0000",
    "1400 0300 0a630001 000000000000000000000000",
    "0600 0400 0050 0000",
    "4800 0280",                                # nested IPVS_CMD_ATTR_DEST
    "1400 0100 0a630101 000000000000000000000000",  # ADDR
    "0600 0200 1f90 0000",                      # PORT 8080
    "0800 0300 03000000",                       # FWD_METHOD = DROUTE
    "0800 0400 03000000",                       # WEIGHT 3
    "0800 0500 0a000000",                       # U_THRESH 10
    "0800 0600 02000000",                       # L_THRESH 2
    "0600 0b00 0200 0000",                      # ADDR_FAMILY = AF_INET
)


def test_golden_new_service():
    assert w.IpvsEncoder(FAMILY).service(w.IPVS_CMD_NEW_SERVICE, SVC, 7) == GOLDEN_NEW_SERVICE


def test_golden_new_dest():
    assert w.IpvsEncoder(FAMILY).dest(w.IPVS_CMD_NEW_DEST, DEST, 8) == GOLDEN_NEW_DEST


def test_delete_messages_carry_keys_only():
    enc = w.IpvsEncoder(FAMILY)
    del_dest = enc.dest(w.IPVS_CMD_DEL_DEST, DEST, 9)
    dest_nest = nl.parse_attrs(del_dest, *_top(del_dest)[w.IPVS_CMD_ATTR_DEST])
    assert set(dest_nest) == {w.IPVS_DEST_ATTR_ADDR, w.IPVS_DEST_ATTR_PORT, w.IPVS_DEST_ATTR_ADDR_FAMILY}
    del_svc = enc.service(w.IPVS_CMD_DEL_SERVICE, SVC, 10)
    svc_nest = nl.parse_attrs(del_svc, *_top(del_svc)[w.IPVS_CMD_ATTR_SERVICE])
    assert set(svc_nest) == {w.IPVS_SVC_ATTR_AF, w.IPVS_SVC_ATTR_PROTOCOL,
                             w.IPVS_SVC_ATTR_ADDR, w.IPVS_SVC_ATTR_PORT}


def _top(msg: bytes) -> dict[int, tuple[int, int]]:
    (hdr,) = nl.iter_messages(msg, len(msg))
    return nl.parse_attrs(msg, hdr.start + nl.GENL_HDR.size, hdr.end)


def test_fwmark_service_key_has_no_address():
    enc = w.IpvsEncoder(FAMILY)
    msg = enc.service(w.IPVS_CMD_DEL_SERVICE, IpvsService(ServiceKey.mark(7, 6), "rr"), 1)
    nest = nl.parse_attrs(msg, *_top(msg)[w.IPVS_CMD_ATTR_SERVICE])
    assert set(nest) == {w.IPVS_SVC_ATTR_AF, w.IPVS_SVC_ATTR_FWMARK}
    assert struct.unpack_from("=H", msg, nest[w.IPVS_SVC_ATTR_AF][0])[0] == socket.AF_INET6


# --------------------------------------------------------------------------
# pyroute2 as an independent decoder of what we encode

def _pyroute2_decode(data: bytes):
    from pyroute2.netlink.generic.ipvs import ipvsmsg
    msg = ipvsmsg(data)
    msg.decode()
    return msg


def test_pyroute2_decodes_our_service():
    msg = _pyroute2_decode(w.IpvsEncoder(FAMILY).service(w.IPVS_CMD_SET_SERVICE, SVC, 3))
    assert msg["cmd"] == w.IPVS_CMD_SET_SERVICE
    assert msg["header"]["type"] == FAMILY and msg["header"]["sequence_number"] == 3
    svc = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
    assert svc.get_attr("IPVS_SVC_ATTR_AF") == socket.AF_INET
    assert svc.get_attr("IPVS_SVC_ATTR_PROTOCOL") == socket.IPPROTO_TCP
    assert svc.get_attr("IPVS_SVC_ATTR_ADDR") == "10.99.0.1"
    assert svc.get_attr("IPVS_SVC_ATTR_PORT") == 80
    assert svc.get_attr("IPVS_SVC_ATTR_SCHED_NAME") == "sh"
    flags = svc.get_attr("IPVS_SVC_ATTR_FLAGS")
    assert (flags["flags"], flags["mask"]) == (0x1 | 0x10, 0xFFFFFFFF)
    assert svc.get_attr("IPVS_SVC_ATTR_TIMEOUT") == 300
    assert svc.get_attr("IPVS_SVC_ATTR_NETMASK") == "255.255.255.0"


def test_pyroute2_decodes_our_dest():
    key6 = ServiceKey.virtual("udp", "fd00::10", 53)
    dest = IpvsDest(key6, "fd00::1:2", 5353, "tunnel", 0, 7, 3)
    msg = _pyroute2_decode(w.IpvsEncoder(FAMILY).dest(w.IPVS_CMD_NEW_DEST, dest, 4))
    svc = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
    assert svc.get_attr("IPVS_SVC_ATTR_AF") == socket.AF_INET6
    assert svc.get_attr("IPVS_SVC_ATTR_PROTOCOL") == socket.IPPROTO_UDP
    assert svc.get_attr("IPVS_SVC_ATTR_ADDR") == "fd00::10"
    assert svc.get_attr("IPVS_SVC_ATTR_PORT") == 53
    d = msg.get_attr("IPVS_CMD_ATTR_DEST")
    assert d.get_attr("IPVS_DEST_ATTR_ADDR_FAMILY") == socket.AF_INET6
    assert d.get_attr("IPVS_DEST_ATTR_ADDR") == "fd00::1:2"
    assert d.get_attr("IPVS_DEST_ATTR_PORT") == 5353
    assert d.get_attr("IPVS_DEST_ATTR_FWD_METHOD") == 2
    assert d.get_attr("IPVS_DEST_ATTR_WEIGHT") == 0
    assert d.get_attr("IPVS_DEST_ATTR_U_THRESH") == 7
    assert d.get_attr("IPVS_DEST_ATTR_L_THRESH") == 3


def test_pyroute2_encoded_dest_reply_with_stats_decodes():
    """A kernel-like GET_DEST reply built by pyroute2's encoder (4-byte address,
    STATS64 and STATS both present): we read conns and prefer the 64-bit stats."""
    from pyroute2.netlink.generic.ipvs import ipvsmsg
    m = ipvsmsg()
    m["cmd"], m["version"] = w.IPVS_CMD_GET_DEST, 1
    m["header"]["type"], m["header"]["flags"], m["header"]["sequence_number"] = FAMILY, 2, 5
    m["attrs"] = [("IPVS_CMD_ATTR_DEST", {"attrs": [
        ("IPVS_DEST_ATTR_ADDR_FAMILY", socket.AF_INET),
        ("IPVS_DEST_ATTR_ADDR", "10.99.1.1"),
        ("IPVS_DEST_ATTR_PORT", 8080),
        ("IPVS_DEST_ATTR_FWD_METHOD", 2),
        ("IPVS_DEST_ATTR_WEIGHT", 5),
        ("IPVS_DEST_ATTR_U_THRESH", 0),
        ("IPVS_DEST_ATTR_L_THRESH", 0),
        ("IPVS_DEST_ATTR_ACTIVE_CONNS", 3),
        ("IPVS_DEST_ATTR_INACT_CONNS", 4),
        ("IPVS_DEST_ATTR_PERSIST_CONNS", 1),
        ("IPVS_DEST_ATTR_STATS64", {"attrs": [("IPVS_STATS_ATTR_CONNS", 2 ** 40),
                                              ("IPVS_STATS_ATTR_INBYTES", 77),
                                              ("IPVS_STATS_ATTR_OUTBPS", 9)]}),
        ("IPVS_DEST_ATTR_STATS", {"attrs": [("IPVS_STATS_ATTR_CONNS", 9)]}),
    ]})]
    m.encode()
    data = bytes(m.data)
    (hdr,) = nl.iter_messages(data, len(data))
    dest, stats = w.decode_dest(data, hdr, VIP, with_stats=True)
    assert dest == IpvsDest(VIP, "10.99.1.1", 8080, "tunnel", 5, 0, 0)
    assert stats == DestStats(3, 4, 1, Stats(conns=2 ** 40, inbytes=77, outbps=9))
    assert w.decode_dest(data, hdr, VIP) == (dest, None)


# --------------------------------------------------------------------------
# round trips: what we encode decodes back to the same value

def _roundtrip_service(svc: IpvsService) -> IpvsService:
    msg = w.IpvsEncoder(FAMILY).service(w.IPVS_CMD_NEW_SERVICE, svc, 1)
    (hdr,) = nl.iter_messages(msg, len(msg))
    got, stats = w.decode_service(msg, hdr)
    assert stats is None
    return got


def _roundtrip_dest(dest: IpvsDest) -> IpvsDest:
    msg = w.IpvsEncoder(FAMILY).dest(w.IPVS_CMD_NEW_DEST, dest, 1)
    (hdr,) = nl.iter_messages(msg, len(msg))
    return w.decode_dest(msg, hdr, dest.service)[0]


@pytest.mark.parametrize("svc", [
    SVC,
    IpvsService(ServiceKey.virtual("udp", "10.99.0.2", 53), "rr"),
    IpvsService(ServiceKey.virtual("sctp", "10.99.0.3", 9), "wlc", frozenset({"one-packet"})),
    IpvsService(ServiceKey.virtual("tcp", "fd00::1", 443), "mh",
                frozenset({"persistent", "mh-port", "mh-fallback"}), 60, 64),
    IpvsService(ServiceKey.mark(7), "sh", frozenset({"sh-fallback"})),
    IpvsService(ServiceKey.mark(8, 6), "rr", frozenset({"persistent"}), 100, 128),
    IpvsService(ServiceKey.virtual("tcp", "10.99.0.4", 0), "rr", frozenset({"persistent"}), 1, 0),
])
def test_service_roundtrip(svc):
    assert _roundtrip_service(svc) == svc


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)
u32 = st.integers(0, 2 ** 32 - 1)


@st.composite
def service_keys(draw):
    if draw(st.booleans()):
        return ServiceKey.mark(draw(st.integers(1, 2 ** 32 - 1)), draw(st.sampled_from([4, 6])))
    addr = draw(ipv4 | ipv6)
    return ServiceKey.virtual(draw(st.sampled_from(["tcp", "udp", "sctp"])), addr, draw(ports))


@st.composite
def services(draw):
    key = draw(service_keys())
    sched = draw(st.sampled_from(["rr", "wlc", "sh", "mh"]))
    flags = set(draw(st.sets(st.sampled_from(["persistent", "one-packet"]))))
    if sched in ("sh", "mh"):
        flags |= {f"{sched}-{x}" for x in draw(st.sets(st.sampled_from(["port", "fallback"])))}
    netmask = draw(st.integers(1, 128) if key.af == 6 else st.integers(0, 32))
    return IpvsService(key, sched, frozenset(flags), draw(u32), netmask)


@st.composite
def dests(draw):
    key = draw(service_keys())
    return IpvsDest(key, draw(ipv4 | ipv6), draw(ports), draw(st.sampled_from(["masq", "route", "tunnel"])),
                    draw(u32), draw(u32), draw(u32))


@settings(max_examples=300, deadline=None)
@given(services())
def test_service_roundtrip_property(svc):
    assert _roundtrip_service(svc) == svc


@settings(max_examples=300, deadline=None)
@given(dests())
def test_dest_roundtrip_property(dest):
    assert _roundtrip_dest(dest) == dest


def test_decoded_ipv6_text_is_canonical():
    dest = IpvsDest(VIP, "fd00::1", 80)
    msg = w.IpvsEncoder(FAMILY).dest(w.IPVS_CMD_NEW_DEST, IpvsDest(VIP, "FD00:0::0:1", 80), 1)
    (hdr,) = nl.iter_messages(msg, len(msg))
    assert w.decode_dest(msg, hdr, VIP)[0] == dest


# --------------------------------------------------------------------------
# mappings both ways

@pytest.mark.parametrize("sched,names,bits", [
    ("rr", set(), 0),
    ("rr", {"persistent"}, 0x1),
    ("wlc", {"one-packet"}, 0x4),
    ("sh", {"sh-fallback"}, 0x8),
    ("sh", {"sh-port"}, 0x10),
    ("mh", {"mh-fallback", "mh-port", "persistent"}, 0x19),
])
def test_flags_both_ways(sched, names, bits):
    assert w.flags_to_wire(sched, frozenset(names)) == bits
    assert w.flags_from_wire(sched, bits) == names
    # the kernel adds HASHED to every service it holds: never reported
    assert w.flags_from_wire(sched, bits | w.IP_VS_SVC_F_HASHED) == names


def test_scheduler_flags_belong_to_their_scheduler():
    with pytest.raises(ValueError, match="sh-port needs scheduler sh"):
        w.flags_to_wire("mh", frozenset({"sh-port"}))
    with pytest.raises(ValueError, match="unknown"):
        w.flags_to_wire("rr", frozenset({"sticky"}))
    assert w.flags_from_wire("rr", 0x8 | 0x10) == frozenset()   # rr ignores the bits


@pytest.mark.parametrize("name,code", [("masq", 0), ("tunnel", 2), ("route", 3)])
def test_fwd_methods_both_ways(name, code):
    assert w.FWD_TO_WIRE[name] == code
    assert w.FWD_FROM_WIRE[code] == name


def test_foreign_fwd_methods_decode_to_names_pask_never_writes():
    assert w.FWD_FROM_WIRE[1] == "local" and "local" not in w.FWD_TO_WIRE
    with pytest.raises(ValueError, match="forwarding method"):
        w.IpvsEncoder(FAMILY).dest(w.IPVS_CMD_NEW_DEST, IpvsDest(VIP, "10.0.0.1", 80, "local"), 1)


@pytest.mark.parametrize("af,prefix,wire_bytes", [
    (4, 32, "ffffffff"), (4, 24, "ffffff00"), (4, 0, "00000000"), (4, 1, "80000000"),
    (6, 64, "40000000"), (6, 128, "80000000"),   # IPv6: a host-order u32 prefix length
])
def test_netmask_both_ways(af, prefix, wire_bytes):
    raw = w.netmask_to_wire(af, prefix)
    assert nl.U32.pack(raw).hex() == wire_bytes
    assert w.netmask_from_wire(af, raw) == prefix


def test_ipv4_netmask_out_of_range_is_refused():
    with pytest.raises(ValueError):
        w.netmask_to_wire(4, 33)


def test_non_contiguous_ipv4_mask_reads_as_leading_ones():
    assert w.netmask_from_wire(4, nl.U32.unpack(bytes([255, 0, 255, 0]))[0]) == 8


def test_addresses_are_16_byte_fields():
    assert w.addr_to_wire(4, "10.99.0.1") == bytes([10, 99, 0, 1]) + bytes(12)
    assert w.addr_to_wire(6, "fd00::1") == socket.inet_pton(socket.AF_INET6, "fd00::1")
    assert w.addr_from_wire(4, bytes([10, 99, 0, 1]) + bytes(12)) == "10.99.0.1"


# --------------------------------------------------------------------------
# pask ops -> commands

@pytest.mark.parametrize("op,cmd", [
    (Op("add", "service", "k", None, SVC), w.IPVS_CMD_NEW_SERVICE),
    (Op("set", "service", "k", SVC, SVC), w.IPVS_CMD_SET_SERVICE),
    (Op("delete", "service", "k", SVC, None), w.IPVS_CMD_DEL_SERVICE),
    (Op("add", "dest", "k", None, DEST), w.IPVS_CMD_NEW_DEST),
    (Op("set", "dest", "k", DEST, DEST), w.IPVS_CMD_SET_DEST),
    (Op("delete", "dest", "k", DEST, None), w.IPVS_CMD_DEL_DEST),
])
def test_ops_map_to_commands(op, cmd):
    msg = w.IpvsEncoder(FAMILY).op(op, 42)
    length, mtype, flags, seq, _pid, got_cmd, version, _ = nl.MSG_HDR.unpack_from(msg)
    assert (length, mtype, flags, seq, got_cmd, version) == (len(msg), FAMILY, nl.NLM_F_REQUEST, 42, cmd, 1)


@pytest.mark.parametrize("op", [
    Op("replace", "nft", "table", None, None),
    Op("add", "dest", "k", None, SVC),                              # wrong value type
    Op("add", "dest", "k", None, IpvsDest(VIP, "10.0.0.1", 70000)),  # port out of range
    Op("add", "dest", "k", None, IpvsDest(VIP, "10.0.0.1", 80, weight=-1)),
    Op("add", "dest", "k", None, IpvsDest(VIP, "not-an-ip", 80)),
    Op("add", "service", "k", None, IpvsService(VIP, "rr", netmask=40)),
    Op("add", "service", "k", None, IpvsService(ServiceKey("icmp", "10.0.0.1", 0), "rr")),
])
def test_unencodable_ops_raise_value_error(op):
    with pytest.raises(ValueError):
        w.IpvsEncoder(FAMILY).op(op, 1)


def test_dump_requests():
    enc = w.IpvsEncoder(FAMILY)
    msg = enc.get_services(5)
    assert nl.MSG_HDR.unpack_from(msg)[:6] == (len(msg), FAMILY, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, 5, 0,
                                              w.IPVS_CMD_GET_SERVICE)
    msg = enc.get_dests(VIP, 6)
    assert nl.MSG_HDR.unpack_from(msg)[5] == w.IPVS_CMD_GET_DEST
    assert set(_top(msg)) == {w.IPVS_CMD_ATTR_SERVICE}


GOLDEN_GET_SERVICE = _hex(
    "44000000 2500 0100 0b000000 00000000",     # nlmsghdr: len 68, REQUEST only (no DUMP), seq 11
    "04 01 0000",                               # genl: GET_SERVICE, version 1
    "3000 0180",                                # nested service key, nothing else
    "0600 0100 0200 0000",
    "0600 0200 0600 0000",
    "1400 0300 0a630001 000000000000000000000000",
    "0600 0400 0050 0000",
)


def test_golden_get_service():
    """One service, not a dump: the kernel's ip_vs_genl_get_cmd answers NEW_SERVICE or ESRCH."""
    assert w.IpvsEncoder(FAMILY).get_service(VIP, 11) == GOLDEN_GET_SERVICE


@pytest.mark.parametrize("key", [VIP, ServiceKey.virtual("udp", "fd00::10", 53),
                                 ServiceKey.mark(7), ServiceKey.mark(8, 6)])
def test_pyroute2_decodes_our_get_service(key):
    msg = _pyroute2_decode(w.IpvsEncoder(FAMILY).get_service(key, 12))
    assert msg["cmd"] == w.IPVS_CMD_GET_SERVICE
    assert msg["header"]["type"] == FAMILY and msg["header"]["sequence_number"] == 12
    assert msg["header"]["flags"] == nl.NLM_F_REQUEST
    svc = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
    assert svc.get_attr("IPVS_SVC_ATTR_AF") == w.AF_TO_WIRE[key.af]
    assert svc.get_attr("IPVS_SVC_ATTR_SCHED_NAME") is None     # a key, not settings
    if key.fwmark:
        assert svc.get_attr("IPVS_SVC_ATTR_FWMARK") == key.fwmark
        assert svc.get_attr("IPVS_SVC_ATTR_ADDR") is None
    else:
        assert svc.get_attr("IPVS_SVC_ATTR_PROTOCOL") == w.PROTO_TO_WIRE[key.protocol]
        assert svc.get_attr("IPVS_SVC_ATTR_ADDR") == key.addr
        assert svc.get_attr("IPVS_SVC_ATTR_PORT") == key.port


# --------------------------------------------------------------------------
# replies: acks, errors, family id, several messages per buffer

def _error_ack(seq: int, code: int) -> bytes:
    """NLMSG_ERROR as the kernel sends it with NETLINK_CAP_ACK: -errno + the request's header."""
    request_hdr = nl.NLMSG_HDR.pack(140, FAMILY, nl.NLM_F_REQUEST, seq, 0)
    body = nl.NLMSGERR.pack(-code) + request_hdr
    return nl.NLMSG_HDR.pack(16 + len(body), nl.NLMSG_ERROR, 0x100, seq, 4242) + body


def test_error_acks_parse_to_seq_and_errno():
    buf = bytearray(_error_ack(7, errno.EEXIST) + _error_ack(9, 0) + bytes(64))
    acks = [nl.decode_ack(buf, h) for h in nl.iter_messages(buf, 72)]
    assert acks == [nl.Ack(7, errno.EEXIST), nl.Ack(9, 0)]


def test_truncated_reply_is_an_error():
    data = _error_ack(7, errno.ENOENT)
    with pytest.raises(ValueError, match="truncated"):
        list(nl.iter_messages(data, len(data) - 4))


def test_get_family_request_and_reply():
    req = nl.encode_get_family(1, w.IPVS_GENL_NAME)
    length, mtype, flags, seq, _pid, cmd, _v, _ = nl.MSG_HDR.unpack_from(req)
    assert (mtype, cmd, flags & nl.NLM_F_REQUEST) == (nl.GENL_ID_CTRL, nl.CTRL_CMD_GETFAMILY, 1)
    assert b"IPVS\0" in req
    attrs = nl.nla_u16(nl.CTRL_ATTR_FAMILY_ID, 0x25) + nl.nla_str(nl.CTRL_ATTR_FAMILY_NAME, "IPVS")
    reply = nl.message(nl.GENL_ID_CTRL, 0, 1, 1, 2, attrs)
    (hdr,) = nl.iter_messages(reply, len(reply))
    assert nl.decode_family_id(reply, hdr) == 0x25


def test_service_reply_with_stats():
    """A GET_SERVICE reply as the kernel builds it: key, settings, HASHED flag, stats."""
    stats32 = nl.nla_nest(w.IPVS_SVC_ATTR_STATS, nl.nla_u32(1, 5), nl.nla_u32(2, 6))
    attrs = nl.nla_nest(
        w.IPVS_CMD_ATTR_SERVICE,
        w.service_attrs(SVC).replace(nl.FLAGS_STRUCT.pack(0x11, 0xFFFFFFFF),
                                     nl.FLAGS_STRUCT.pack(0x13, 0xFFFFFFFF)),
        stats32)
    reply = nl.message(FAMILY, nl.NLM_F_MULTI, 3, w.IPVS_CMD_NEW_SERVICE, 1, attrs)
    (hdr,) = nl.iter_messages(reply, len(reply))
    svc, stats = w.decode_service(reply, hdr, with_stats=True)
    assert svc == SVC
    assert stats == Stats(conns=5, inpkts=6)


# --------------------------------------------------------------------------
# replies captured from Linux 6.1 (Debian 6.1.0-56, in the IPVS VM)

KERNEL_FAMILY = 0x20
KERNEL_SEQ = 0x24
# GET_DEST reply for 10.99.128.32:8080 masq weight 4 in service 10.99.16.1:80/tcp
KERNEL_DEST_REPLY = bytes.fromhex(
    "6401000020000200240000008a0000000501000050010200140001000a63802000000000000000000000000006000200"
    "1f9000000800030000000000080004000400000005000d000000000006000e000000000006000f000000000008000500"
    "00000000080006000000000008000700000000000800080000000000080009000000000006000b00020000005c000a00"
    "0800010000000000080002000000000008000300000000000c00040000000000000000000c0005000000000000000000"
    "080006000000000008000700000000000800080000000000080009000000000008000a00000000007c000c000c000100"
    "00000000000000000c00020000000000000000000c00030000000000000000000c00040000000000000000000c000500"
    "00000000000000000c00060000000000000000000c00070000000000000000000c00080000000000000000000c000900"
    "00000000000000000c000a000000000000000000")
KERNEL_DONE = bytes.fromhex("1400000003000200240000008a00000000000000")
# GET_SERVICE reply: 10.99.16.1:80/tcp wrr persistent 300 netmask /24 (flags include HASHED)
KERNEL_SERVICE_REPLY = bytes.fromhex(
    "4001000020000200230000008a000000010100002c01010006000100020000000600020006000000140003000a631001"
    "000000000000000000000000060004000050000008000600777272000c00070003000000ffffffff080008002c010000"
    "08000900ffffff005c000a000800010000000000080002000000000008000300000000000c0004000000000000000000"
    "0c0005000000000000000000080006000000000008000700000000000800080000000000080009000000000008000a00"
    "000000007c000c000c00010000000000000000000c00020000000000000000000c00030000000000000000000c000400"
    "00000000000000000c00050000000000000000000c00060000000000000000000c00070000000000000000000c000800"
    "00000000000000000c00090000000000000000000c000a000000000000000000")
KERNEL_KEY = ServiceKey.virtual("tcp", "10.99.16.1", 80)
KERNEL_DEST = IpvsDest(KERNEL_KEY, "10.99.128.32", 8080, "masq", 4)


def test_kernel_service_reply_decodes():
    (hdr,) = nl.iter_messages(KERNEL_SERVICE_REPLY, len(KERNEL_SERVICE_REPLY))
    svc, stats = w.decode_service(KERNEL_SERVICE_REPLY, hdr, with_stats=True)
    assert svc == IpvsService(KERNEL_KEY, "wrr", frozenset({"persistent"}), 300, 24)
    assert stats == Stats()


def test_get_service_key_is_the_kernels_own_key():
    """The key attributes we ask with are byte for byte those Linux 6.1 puts in its
    reply for that service, and that reply decodes to the key asked for."""
    request = w.IpvsEncoder(KERNEL_FAMILY).get_service(KERNEL_KEY, 1)
    asked = nl.parse_attrs(request, *_top(request)[w.IPVS_CMD_ATTR_SERVICE])
    (hdr,) = nl.iter_messages(KERNEL_SERVICE_REPLY, len(KERNEL_SERVICE_REPLY))
    got = nl.parse_attrs(KERNEL_SERVICE_REPLY, *nl.parse_attrs(
        KERNEL_SERVICE_REPLY, hdr.start + nl.GENL_HDR.size, hdr.end)[w.IPVS_CMD_ATTR_SERVICE])
    assert set(asked) == {w.IPVS_SVC_ATTR_AF, w.IPVS_SVC_ATTR_PROTOCOL, w.IPVS_SVC_ATTR_ADDR,
                          w.IPVS_SVC_ATTR_PORT}
    for attr, (s, e) in asked.items():
        assert request[s:e] == KERNEL_SERVICE_REPLY[got[attr][0]:got[attr][1]], attr
    assert w.decode_service(KERNEL_SERVICE_REPLY, hdr)[0].key == KERNEL_KEY


def test_kernel_dest_reply_decodes_generically():
    (hdr,) = nl.iter_messages(KERNEL_DEST_REPLY, len(KERNEL_DEST_REPLY))
    assert w.decode_dest(KERNEL_DEST_REPLY, hdr, KERNEL_KEY, True) == (KERNEL_DEST, DestStats())


def _variant(addr_last_octet: int, weight: int, seq: int = KERNEL_SEQ) -> bytes:
    """The captured reply with another address, weight and sequence number."""
    msg = bytearray(KERNEL_DEST_REPLY)
    struct.pack_into("=I", msg, 8, seq)
    addr_at = KERNEL_DEST_REPLY.index(bytes([10, 99, 128, 32]))
    msg[addr_at + 3] = addr_last_octet
    weight_at = KERNEL_DEST_REPLY.index(bytes.fromhex("0800 0400 04000000"))
    struct.pack_into("=I", msg, weight_at + 4, weight)
    return bytes(msg)


def test_dest_decoder_fast_path_agrees_with_generic(monkeypatch):
    """The learned-layout path must read exactly what the generic parser reads,
    skip other sequence numbers, fall back for other shapes, and stop at DONE."""
    generic_calls = []
    generic = w.decode_dest
    monkeypatch.setattr(layout, "decode_dest", lambda *a: generic_calls.append(a) or generic(*a))
    other_shape = w.IpvsEncoder(KERNEL_FAMILY).dest(
        w.IPVS_CMD_NEW_DEST, IpvsDest(KERNEL_KEY, "10.99.128.99", 80, "route", 9), KERNEL_SEQ)
    buf = bytearray(b"".join([
        _variant(1, 1), _variant(2, 2), _variant(77, 7, seq=KERNEL_SEQ + 1),   # stale: skipped
        other_shape, _variant(3, 3), KERNEL_DONE, _variant(4, 4)]))            # after DONE: unread
    dec = layout.DestDecoder()
    dests: dict = {}
    assert dec.decode_into(buf, len(buf), KERNEL_SEQ, KERNEL_KEY, dests, None) is True
    assert dec._layouts[False] is not None               # learned from the first reply
    assert list(dests.values()) == [
        IpvsDest(KERNEL_KEY, "10.99.128.1", 8080, "masq", 1),
        IpvsDest(KERNEL_KEY, "10.99.128.2", 8080, "masq", 2),
        IpvsDest(KERNEL_KEY, "10.99.128.99", 80, "route", 9),
        IpvsDest(KERNEL_KEY, "10.99.128.3", 8080, "masq", 3),
    ]
    assert all(k == d.key for k, d in dests.items())
    assert len(generic_calls) == 2      # the first reply (learning) and the other shape


def _with_counters(msg: bytes, active: int, conns64: int, outbps64: int) -> bytes:
    """A captured reply with some connection counts and 64-bit counters filled in."""
    out = bytearray(msg)
    (hdr,) = nl.iter_messages(out, len(out))
    nest = nl.parse_attrs(out, *nl.parse_attrs(out, hdr.start + 4, hdr.end)[w.IPVS_CMD_ATTR_DEST])
    struct.pack_into("=I", out, nest[w.IPVS_DEST_ATTR_ACTIVE_CONNS][0], active)
    struct.pack_into("=I", out, nest[w.IPVS_DEST_ATTR_PERSIST_CONNS][0], 1)
    stats64 = nl.parse_attrs(out, *nest[w.IPVS_DEST_ATTR_STATS64])
    struct.pack_into("=Q", out, stats64[1][0], conns64)           # IPVS_STATS_ATTR_CONNS
    struct.pack_into("=Q", out, stats64[10][0], outbps64)         # IPVS_STATS_ATTR_OUTBPS
    return bytes(out)


def test_dest_decoder_partial_buffers_and_stats(monkeypatch):
    """Counters also take the learned path (pask-status and draining read them)."""
    generic_calls = []
    generic = w.decode_dest
    monkeypatch.setattr(layout, "decode_dest", lambda *a: generic_calls.append(a) or generic(*a))
    dec = layout.DestDecoder()
    dests, stats = {}, {}
    first = bytearray(_with_counters(_variant(1, 1), 3, 2 ** 40, 7)
                      + _with_counters(_variant(2, 2), 4, 5, 6))
    assert dec.decode_into(first, len(first), KERNEL_SEQ, KERNEL_KEY, dests, stats) is False
    done = bytearray(KERNEL_DONE)
    assert dec.decode_into(done, len(done), KERNEL_SEQ, KERNEL_KEY, dests, stats) is True
    k1 = IpvsDest(KERNEL_KEY, "10.99.128.1", 8080).key
    k2 = IpvsDest(KERNEL_KEY, "10.99.128.2", 8080).key
    assert stats == {k1: DestStats(3, 0, 1, Stats(conns=2 ** 40, outbps=7)),
                     k2: DestStats(4, 0, 1, Stats(conns=5, outbps=6))}
    assert (dests[k1].weight, dests[k2].weight) == (1, 2)
    assert len(generic_calls) == 1
    # the stats-less layout is learned separately
    again: dict = {}
    assert dec.decode_into(first + done, len(first) + len(done), KERNEL_SEQ, KERNEL_KEY, again, None)
    assert again == dests and len(generic_calls) == 2


def test_dest_decoder_raises_error_replies():
    buf = bytearray(_error_ack(KERNEL_SEQ, errno.ESRCH))
    with pytest.raises(OSError) as exc:
        layout.DestDecoder().decode_into(buf, len(buf), KERNEL_SEQ, KERNEL_KEY, {}, None)
    assert exc.value.errno == errno.ESRCH


# --------------------------------------------------------------------------
# IpvsNetlink pieces that need no kernel

def test_missing_schedulers_reads_sys_module_builtin_and_dep(tmp_path):
    from pask_ipvs.backend.ipvs import IpvsNetlink
    sysmod = tmp_path / "sys_module"
    (sysmod / "ip_vs_rr").mkdir(parents=True)                  # loaded
    mods = tmp_path / "lib_modules"
    mods.mkdir()
    (mods / "modules.builtin").write_text("kernel/net/netfilter/ipvs/ip_vs_wlc.ko\n")
    (mods / "modules.dep").write_text(
        "kernel/net/netfilter/ipvs/ip_vs_sh.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz\n"
        "kernel/net/netfilter/ipvs/ip_vs_mh.ko.zst: kernel/net/netfilter/ipvs/ip_vs.ko.zst\n")
    backend = IpvsNetlink(sys_module_dir=str(sysmod), modules_dir=str(mods))
    assert backend.missing_schedulers(["rr", "wlc", "sh", "mh", "twos", "twos"]) == {"twos": "ip_vs_twos"}
    assert IpvsNetlink(sys_module_dir=str(sysmod), modules_dir=str(tmp_path / "none")) \
        .missing_schedulers(["rr", "sh"]) == {"sh": "ip_vs_sh"}


def test_backend_module_does_not_import_pyroute2():
    import subprocess
    import sys
    code = ("import sys; import pask_ipvs.backend.ipvs, pask_ipvs.backend.fake_ipvs; "
            "sys.exit(1 if any(m.startswith('pyroute2') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_empty_apply_touches_no_socket():
    from pask_ipvs.backend.ipvs import IpvsNetlink
    backend = IpvsNetlink()
    assert backend.apply([]) == []
    assert backend._conn is None


# --------------------------------------------------------------------------
# fingerprints: configuration bytes found without decoding

def _busy(reply: bytes, active: int, inact: int, conns: int) -> bytes:
    """The captured reply with other connection counters and stats (what traffic changes)."""
    msg = bytearray(reply)
    (hdr,) = nl.iter_messages(msg, len(msg))
    nest = nl.parse_attrs(msg, *nl.parse_attrs(msg, hdr.start + nl.GENL_HDR.size, hdr.end)[w.IPVS_CMD_ATTR_DEST])
    struct.pack_into("=I", msg, nest[w.IPVS_DEST_ATTR_ACTIVE_CONNS][0], active)
    struct.pack_into("=I", msg, nest[w.IPVS_DEST_ATTR_INACT_CONNS][0], inact)
    stats = nl.parse_attrs(msg, *nest[w.IPVS_DEST_ATTR_STATS64])
    struct.pack_into("=Q", msg, stats[1][0], conns)
    return bytes(msg)


def _scanner_for(buf: bytes) -> scan.DestConfigScanner:
    scanner = scan.DestConfigScanner()
    assert scanner.learn(buf, len(buf), KERNEL_FAMILY)
    return scanner


def test_scanner_finds_each_kernel_reply_configuration_and_not_its_counters():
    buf = b"".join([_variant(1, 1), _variant(2, 2), _variant(3, 3), KERNEL_DONE])
    found = _scanner_for(buf).scan(buf, len(buf))
    assert len(found) == 3
    # the configuration attributes of Linux 6.1's reply: address .. thresholds, tunnel settings
    (hdr,) = nl.iter_messages(KERNEL_DEST_REPLY, len(KERNEL_DEST_REPLY))
    nest = nl.parse_attrs(KERNEL_DEST_REPLY, *nl.parse_attrs(
        KERNEL_DEST_REPLY, hdr.start + nl.GENL_HDR.size, hdr.end)[w.IPVS_CMD_ATTR_DEST])
    first = nest[w.IPVS_DEST_ATTR_ADDR][0] - nl.NLA_HDR.size
    counters = nest[w.IPVS_DEST_ATTR_ACTIVE_CONNS][0] - nl.NLA_HDR.size
    assert found[0] == _variant(1, 1)[first:counters]
    busy = b"".join([_busy(_variant(1, 1), 5, 7, 99), _variant(2, 2),
                     _busy(_variant(3, 3), 1, 0, 1 << 40), KERNEL_DONE])
    assert _scanner_for(buf).scan(busy, len(busy)) == found          # traffic: same configuration
    reweighted = b"".join([_variant(1, 1), _variant(2, 9), _variant(3, 3), KERNEL_DONE])
    changed = _scanner_for(buf).scan(reweighted, len(reweighted))
    assert changed[0] == found[0] and changed[1] != found[1] and changed[2] == found[2]


def _one_by_one(encoder):
    assert encoder is not None
    return lambda d: encoder(d.service.af, [d])[0]


def test_the_encoder_writes_each_dest_as_linux_6_1_reports_it():
    """Verify by digest stands on this: a desired dest encoded by the learned layout is
    byte for byte the configuration scan() finds in the kernel's reply for that dest
    (the captured 6.1 reply, with its tunnel settings at the kernel's defaults)."""
    buf = b"".join([_variant(1, 1), _variant(2, 2), KERNEL_DONE])
    encode = _one_by_one(_scanner_for(buf).encoder())
    (found,) = _scanner_for(buf).scan(KERNEL_DEST_REPLY, len(KERNEL_DEST_REPLY))
    assert encode(KERNEL_DEST) == found
    for octet, weight in ((1, 1), (2, 9), (200, 0)):
        (found,) = _scanner_for(buf).scan(_variant(octet, weight), len(_variant(octet, weight)))
        assert encode(KERNEL_DEST._replace(addr=f"10.99.128.{octet}", weight=weight)) == found
    others = [KERNEL_DEST._replace(port=8081), KERNEL_DEST._replace(fwd="route"),
              KERNEL_DEST._replace(fwd="tunnel"), KERNEL_DEST._replace(u_threshold=5),
              KERNEL_DEST._replace(l_threshold=5), KERNEL_DEST._replace(weight=5)]
    assert len({encode(d) for d in others} | {encode(KERNEL_DEST)}) == len(others) + 1


def test_the_encoder_refuses_what_the_bytes_cannot_vouch_for():
    encode = _one_by_one(_scanner_for(KERNEL_DEST_REPLY).encoder())
    six = ServiceKey.virtual("tcp", "fd00::1", 80)
    for bad in (KERNEL_DEST._replace(addr="fd00::5", fwd="tunnel"),     # no family in the bytes
                IpvsDest(six, "10.99.1.1", 80, "tunnel"),
                KERNEL_DEST._replace(fwd="local"), KERNEL_DEST._replace(weight=-1),
                KERNEL_DEST._replace(port=70000), KERNEL_DEST._replace(addr="10.99.1")):
        with pytest.raises(ValueError):
            encode(bad)
    assert encode(IpvsDest(six, "fd00::5", 80)) != encode(KERNEL_DEST)
    many = _scanner_for(KERNEL_DEST_REPLY).encoder()
    dests = [KERNEL_DEST, KERNEL_DEST._replace(weight=9)]
    assert many(4, dests) == [encode(d) for d in dests]
    with pytest.raises(ValueError):                    # one bad dest: the whole list refused
        many(4, dests + [KERNEL_DEST._replace(fwd="local")])


def test_no_encoder_before_a_reply_or_for_a_layout_with_attributes_pask_cannot_write():
    assert scan.DestConfigScanner().encoder() is None
    msg = bytearray(KERNEL_DEST_REPLY)                 # TUN_TYPE (13) renamed to type 30
    at = KERNEL_DEST_REPLY.index(bytes.fromhex("05000d00"))
    msg[at + 2] = 30
    assert _scanner_for(bytes(msg)).encoder() is None
    short = w.IpvsEncoder(KERNEL_FAMILY).dest(w.IPVS_CMD_DEL_DEST, KERNEL_DEST, KERNEL_SEQ)
    scanner = scan.DestConfigScanner()                 # a reply without the weight: none either
    if scanner.learn(short, len(short), KERNEL_FAMILY):
        assert scanner.encoder() is None


def test_expected_digests_equal_the_kernels_and_leave_out_what_cannot_be_vouched_for():
    buf = b"".join([_variant(1, 1), _variant(2, 2), KERNEL_DONE])
    scanner = _scanner_for(buf)
    svc = IpvsService(KERNEL_KEY, "wrr", frozenset({"persistent"}), 300, 24)
    dests = [KERNEL_DEST._replace(addr="10.99.128.1", weight=1),
             KERNEL_DEST._replace(addr="10.99.128.2", weight=2)]
    kernel = scan.service_digest(svc, scanner.scan(buf, len(buf)))    # lists .1, then .2
    mixed = ServiceKey.virtual("tcp", "10.99.16.2", 80)
    other = ServiceKey.virtual("tcp", "10.99.16.3", 80)
    services = {KERNEL_KEY: svc, mixed: IpvsService(mixed, "rr")}
    # added .2 then .1: the kernel lists .1 first (newest first); a service's dests may
    # come apart; another family's dest leaves its service out; another service's is ignored
    want = scan.expected_digests(
        services,
        [dests[1], IpvsDest(mixed, "fd00::1", 80, "tunnel"), dests[0], IpvsDest(other, "10.1.1.1", 80)],
        scanner.encoder())
    assert want == {KERNEL_KEY: kernel}
    added_the_other_way = scan.expected_digests(services, [dests[0], dests[1]], scanner.encoder())
    assert added_the_other_way[KERNEL_KEY] != kernel


def test_scanner_learns_nothing_without_a_dest_reply():
    scanner = scan.DestConfigScanner()
    assert not scanner.learn(KERNEL_DONE, len(KERNEL_DONE), KERNEL_FAMILY)
    assert scanner.pattern is None and scanner.scan(KERNEL_DONE, len(KERNEL_DONE)) == []


def test_scanner_reads_only_the_bytes_received():
    buf = _variant(1, 1) + _variant(2, 2)
    assert len(_scanner_for(buf).scan(buf, len(_variant(1, 1)))) == 1


def test_dump_finished_looks_at_the_buffers_end():
    seq = KERNEL_SEQ
    assert nl.dump_finished(KERNEL_DONE, len(KERNEL_DONE), seq) is True
    data = _variant(1, 1) + KERNEL_DONE
    assert nl.dump_finished(data, len(data), seq) is True
    assert nl.dump_finished(data, len(data), seq + 1) is False          # another dump's end
    assert nl.dump_finished(_variant(1, 1), len(_variant(1, 1)), seq) is False
    error = nl.NLMSG_HDR.pack(36, nl.NLMSG_ERROR, 0, seq, 0) + nl.NLMSGERR.pack(-3) + bytes(16)
    assert nl.dump_finished(error, len(error), seq) is None


def test_service_fingerprint_covers_configuration_order_and_count():
    svc = IpvsService(KERNEL_KEY, "wrr", frozenset({"persistent", "sh-port"}), 300, 24)
    a, b = b"dest-a", b"dest-b"
    fp = scan.service_digest(svc, [a, b])
    assert fp == scan.service_digest(
        IpvsService(KERNEL_KEY, "wrr", frozenset({"sh-port", "persistent"}), 300, 24), [a, b])
    others = [scan.service_digest(svc, [b, a]), scan.service_digest(svc, [a]),
              scan.service_digest(svc, [a, b, b]),
              scan.service_digest(IpvsService(KERNEL_KEY, "rr", svc.flags, 300, 24), [a, b]),
              scan.service_digest(IpvsService(KERNEL_KEY, "wrr", svc.flags, 301, 24), [a, b]),
              scan.service_digest(IpvsService(KERNEL_KEY, "wrr", frozenset({"persistent"}), 300, 24),
                                    [a, b])]
    assert fp not in others and len(set(others)) == len(others)


def test_the_encoders_address_memo_is_bounded_and_changes_nothing():
    """A cold apply encodes 33k distinct real servers once each: the memo keeps at most
    _ADDR_MEMO_MAX of them, and a message is the same bytes whether its address was
    remembered or not."""
    from pask_ipvs.backend import ipvs_codec as codec
    from pask_ipvs.objects import IpvsDest, ServiceKey
    from pask_ipvs.plan import Op

    key = ServiceKey.virtual("tcp", "10.99.100.1", 80)
    enc = codec.IpvsEncoder(family=0x20)
    first = {}
    for i in range(codec._ADDR_MEMO_MAX + 500):
        d = IpvsDest(key, f"10.{i // 62500}.{i // 250 % 250}.{1 + i % 250}", 8080, "masq", 1)
        first[i] = enc.op(Op("add", "dest", "", None, d), 7)
        assert len(enc._addr) <= codec._ADDR_MEMO_MAX + 1
    fresh = codec.IpvsEncoder(family=0x20)
    for i in (0, 1, codec._ADDR_MEMO_MAX + 499):
        d = IpvsDest(key, f"10.{i // 62500}.{i // 250 % 250}.{1 + i % 250}", 8080, "masq", 1)
        op = Op("add", "dest", "", None, d)
        assert fresh.op(op, 7) == first[i] == enc.op(op, 7)


def test_apply_encodes_and_sends_batch_by_batch_leaving_out_what_cannot_be_encoded():
    """Ops are encoded one batch at a time: each sendmsg carries batch_size messages, in op
    order, the last asking for the ack; an op the encoder refuses is not sent, fails
    EINVAL, and the ops after it are still sent."""
    import errno as errno_mod

    from pask_ipvs.backend import ipvs as ipvs_mod, ipvs_codec as codec, netlink as nl
    from pask_ipvs.objects import IpvsDest, IpvsService, ServiceKey
    from pask_ipvs.plan import Op

    class AckingSocket:
        def __init__(self):
            self.sent: list[list[tuple[int, int, int]]] = []     # per sendmsg: (cmd, seq, flags)
            self.replies: list[bytes] = []

        def sendall(self, data):
            msgs = [(data[h.start], h.seq, h.flags) for h in nl.iter_messages(data, len(data))]
            self.sent.append(msgs)
            cmd, seq, flags = msgs[-1]
            assert flags & nl.NLM_F_ACK
            self.replies.append(nl.NLMSG_HDR.pack(16 + 4 + 16, nl.NLMSG_ERROR, 0, seq, 0)
                                + bytes(4) + bytes(16))

        def recv_into(self, buf, nbytes=0, flags=0):
            data = self.replies.pop(0)
            buf[:len(data)] = data
            return len(data)

    backend = ipvs_mod.IpvsNetlink(batch_size=2)
    sock = AckingSocket()
    conn = ipvs_mod._Conn.__new__(ipvs_mod._Conn)
    conn.sock, conn.buf, conn._seq = sock, bytearray(4096), 0
    backend._conn, backend._encoder = conn, codec.IpvsEncoder(0x20)
    key = ServiceKey.virtual("tcp", "10.99.0.1", 80)
    bad = IpvsService(ServiceKey.virtual("tcp", "10.99.0.2", 80), "mh", frozenset({"sh-port"}))
    ops = [Op("add", "service", "", None, IpvsService(key, "wrr")), Op("add", "service", "", None, bad)]
    ops += [Op("add", "dest", "", None, IpvsDest(key, f"10.99.1.{i}", 80)) for i in range(1, 5)]
    (err,) = backend.apply(ops)
    assert err.errno == errno_mod.EINVAL and err.op is ops[1]
    seqs = [[seq for _, seq, _ in batch] for batch in sock.sent]
    first = seqs[0][0]
    # op i has sequence number first + i; op 1 was never sent
    assert seqs == [[first, first + 2], [first + 3, first + 4], [first + 5]]
    assert [cmd for batch in sock.sent for cmd, _, _ in batch] == \
        [codec.IPVS_CMD_NEW_SERVICE] + [codec.IPVS_CMD_NEW_DEST] * 4
