#!/usr/bin/env python3
"""Native CPU of verify after a cold apply at 1024 x 32, on the real IPVS backend's code.

    python bench/verify_bench.py [--services 1024] [--dests 32] [--runs 5]

IpvsNetlink reads from a socket stand-in that replays kernel replies built in
advance in Linux 6.1's layout (the dest reply captured in
tests/backend/test_ipvs_codec.py: counters, tunnel settings and both stats nests),
one skb of up to ~4 KiB per recv() as the kernel sends them; the stand-in's own CPU
is measured and taken off, so the numbers are pask's decoding and digesting. Two ways to verify:

* read back: observe() (every dest decoded), then diff (what verify did before);
* by digests: service_digests() (dest dumps scanned), expected_digests() from the
  desired state, then diff against the table that gives (observe_ipvs_by_digests).
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import struct
import sys
import time
from collections import deque

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pask_ipvs.backend import ipvs as ipvs_mod                      # noqa: E402
from pask_ipvs.backend import ipvs_codec as w, netlink as nl        # noqa: E402
from pask_ipvs.backend.base import Backends                         # noqa: E402
from pask_ipvs.backend.fake import fake_backends                    # noqa: E402
from pask_ipvs.objects import Desired, IpvsDest, IpvsService, Observed, ServiceKey  # noqa: E402
from pask_ipvs.observe import observe_ipvs_by_digests               # noqa: E402
from pask_ipvs.plan import diff                                     # noqa: E402
from pask_ipvs.state import PaskState                               # noqa: E402

FAMILY = 0x20
SKB = 4096


def kernel_dest_reply(dest: IpvsDest, seq: int) -> bytes:
    """A GET_DEST dump reply as Linux 6.1 writes it (ip_vs_genl_fill_dest)."""
    af = w.AF_TO_WIRE[6 if ":" in dest.addr else 4]
    stats = b"".join(nl.nla_u32(i, 0) for i in range(1, 11))
    stats64 = b"".join(nl.nla(i, bytes(8)) for i in range(1, 11))
    attrs = (nl.nla(w.IPVS_DEST_ATTR_ADDR, w.addr_to_wire(4 if af == socket.AF_INET else 6, dest.addr))
             + nl.nla_be16(w.IPVS_DEST_ATTR_PORT, dest.port)
             + nl.nla_u32(w.IPVS_DEST_ATTR_FWD_METHOD, w.FWD_TO_WIRE[dest.fwd])
             + nl.nla_u32(w.IPVS_DEST_ATTR_WEIGHT, dest.weight)
             + nl.nla(13, b"\0") + nl.nla(14, b"\0\0") + nl.nla_u16(15, 0)
             + nl.nla_u32(w.IPVS_DEST_ATTR_U_THRESH, dest.u_threshold)
             + nl.nla_u32(w.IPVS_DEST_ATTR_L_THRESH, dest.l_threshold)
             + nl.nla_u32(7, 0) + nl.nla_u32(8, 0) + nl.nla_u32(9, 0)
             + nl.nla_u16(w.IPVS_DEST_ATTR_ADDR_FAMILY, af)
             + nl.nla_nest(w.IPVS_DEST_ATTR_STATS, stats) + nl.nla_nest(w.IPVS_DEST_ATTR_STATS64, stats64))
    return nl.message(FAMILY, nl.NLM_F_MULTI, seq, w.IPVS_CMD_NEW_DEST, 1,
                      nl.nla_nest(w.IPVS_CMD_ATTR_DEST, attrs))


def _done(seq: int) -> bytes:
    return nl.NLMSG_HDR.pack(nl.NLMSG_HDR.size + 4, nl.NLMSG_DONE, nl.NLM_F_MULTI, seq, 0) + bytes(4)


def _skbs(messages: list[bytes], seq: int) -> list[bytes]:
    out, cur = [], b""
    for m in messages:
        if cur and len(cur) + len(m) > SKB:
            out.append(cur)
            cur = b""
        cur += m
    out.append(cur + _done(seq))
    return out


class ReplaySocket:
    """Answers GET_SERVICE dumps and GET_DEST dumps from prebuilt skbs (sequence numbers
    patched in place): the kernel's side costs next to nothing."""

    def __init__(self, services: list[IpvsService], dests: dict[ServiceKey, list[IpvsDest]]):
        enc = w.IpvsEncoder(FAMILY)
        self.service_skbs = _skbs([nl.message(FAMILY, nl.NLM_F_MULTI, 0, w.IPVS_CMD_NEW_SERVICE, 1,
                                              nl.nla_nest(w.IPVS_CMD_ATTR_SERVICE, w.service_attrs(s)))
                                   for s in services], 0)
        self.dest_skbs = {enc.service_key_nest(s.key): _skbs([kernel_dest_reply(d, 0) for d in dests[s.key]], 0)
                          for s in services}
        self.replies: deque[bytes] = deque()
        self.cpu = 0.0                   # process CPU spent in here (taken off pask's numbers)

    def send(self, data: bytes) -> int:
        t = time.process_time()
        try:
            return self._send(data)
        finally:
            self.cpu += time.process_time() - t

    def _send(self, data: bytes) -> int:
        (hdr,) = nl.iter_messages(data, len(data))
        cmd = data[hdr.start]
        skbs = self.service_skbs if cmd == w.IPVS_CMD_GET_SERVICE else \
            self.dest_skbs[bytes(data[hdr.start + nl.GENL_HDR.size:hdr.end])]
        for skb in skbs:
            b = bytearray(skb)
            at = 0
            while at < len(b):
                length = struct.unpack_from("=I", b, at)[0]
                struct.pack_into("=I", b, at + 8, hdr.seq)
                at += nl.pad(length)
            self.replies.append(bytes(b))
        return len(data)

    def recv_into(self, buf: bytearray, nbytes: int = 0, flags: int = 0) -> int:
        data = self.replies.popleft()
        buf[:len(data)] = data
        return len(data)


def backend_on(sock: ReplaySocket) -> ipvs_mod.IpvsNetlink:
    backend = ipvs_mod.IpvsNetlink()
    conn = ipvs_mod._Conn.__new__(ipvs_mod._Conn)
    conn.sock, conn.buf, conn._seq = sock, bytearray(ipvs_mod.RECV_CHUNK), 0
    backend._conn, backend._encoder = conn, w.IpvsEncoder(FAMILY)
    return backend


def table(n: int, m: int) -> tuple[Desired, list[IpvsService], dict]:
    desired = Desired()
    services, dests = [], {}
    for i in range(n):
        key = ServiceKey.virtual("tcp", f"10.99.{128 + i // 250}.{1 + i % 250}", 80)
        svc = IpvsService(key, "wrr")
        services.append(svc)
        desired.services[key] = svc
        desired.owners[key] = f"svc-{i}"
        dests[key] = []
        for j in range(m):
            d = IpvsDest(key, f"10.{(i * m + j) // 62500 % 250}.{(i * m + j) // 250 % 250}.{1 + (i * m + j) % 250}",
                         8080, "masq", 1 + j % 4)
            desired.dests[d.key] = d
            dests[key].append(d)
    for key in dests:                  # the kernel lists a service's dests newest first
        dests[key].reverse()
    return desired, services, dests


def cpu(fns: list, runs: int, sock: "ReplaySocket") -> list[tuple[float, object]]:
    """Best process CPU of each of ``fns`` over ``runs`` (alternating, so a busy machine
    skews them alike), the stand-in socket's own CPU taken off."""
    best: list = [None] * len(fns)
    values: list = [None] * len(fns)
    for _ in range(runs):
        for i, fn in enumerate(fns):
            sock.cpu = 0.0
            t = time.process_time()
            values[i] = fn()
            dt = time.process_time() - t - sock.cpu
            best[i] = dt if best[i] is None or dt < best[i] else best[i]
    return list(zip(best, values))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--services", type=int, default=1024)
    p.add_argument("--dests", type=int, default=32)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    desired, services, dests = table(args.services, args.dests)
    sock = ReplaySocket(services, dests)
    state = PaskState(services={v: k for k, v in desired.owners.items()})

    def read_back():
        observed = backend_on(sock).observe()
        return diff(desired, Observed(ipvs=observed), state)

    def by_digests():
        b: Backends = fake_backends()
        b.ipvs = backend_on(sock)
        observed = observe_ipvs_by_digests(desired, b)
        assert observed is not None
        return diff(desired, Observed(ipvs=observed), state)

    gc.disable()                         # as pask-apply runs (pipeline.apply_config)
    (t_old, plan_old), (t_new, plan_new) = cpu([read_back, by_digests], args.runs, sock)
    assert not plan_old.changed and not plan_new.changed
    n = args.services * args.dests
    print(f"| verify of a cold apply, {args.services} x {args.dests} ({n} dests) | native CPU s, best of {args.runs} |")
    print("|---|---|")
    print(f"| read back (observe: every dest decoded) + diff | {t_old:.3f} |")
    print(f"| by digests (dests scanned, desired encoded) + diff | {t_new:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
