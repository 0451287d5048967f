"""Real packets through a rendered ``inet pask`` on this host's kernel (no IPVS needed).

    client ns (10.99.1.2, 10.99.1.3) -- lb ns (10.99.1.1 | 10.99.2.1) -- dst ns (10.99.2.2, VIPs on lo)

The LB forwards to the VIPs (the dst ns holds them), so what IPVS would do
is replaced by plain routing; what is under test is pask's table: which
packets get which fwmark (``meta mark`` and ``ct mark``) and which connections
are SNATed, counted by a separate accounting table in the LB ns and seen at
the destination.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from pask_ipvs.model import Filter, FilterAction, NatMode, PortRange, Protocol
from pask_ipvs.render.nft import render_table
from builders import svc

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
INC, EXC = FilterAction.INCLUDE, FilterAction.EXCLUDE
WEB, DNS, BROAD = 0x10000, 0x10001, 0x10002


SERVICES = [
    # exact include (vmap dispatch) + an exclude inside the included range; both-NAT by ct mark
    svc("web", "10.99.100.1", 80, Protocol.TCP, NatMode.BOTH_NAT, snat_ip="10.99.2.1", filters=(
        Filter(INC, Protocol.TCP, "10.99.1.0/24", "10.99.100.1/32", PortRange(1024, 65535), PortRange(80, 80)),
        Filter(EXC, src="10.99.1.3/32"))),
    # exact UDP include, port from the service's protocol
    svc("dns", "10.99.100.2", 53, Protocol.UDP, NatMode.DEST_NAT,
        filters=(Filter(INC, dst="10.99.100.2", dst_port=PortRange(53, 53)),)),
    # broad include (jump dispatch) after the exact ones: first matching service wins
    svc("broad", "10.99.100.3", 80, Protocol.TCP, NatMode.DEST_NAT,
        filters=(Filter(INC, src="10.99.1.2/32", protocol=Protocol.UDP),)),
    # no filter, both-NAT by the original destination (VIP chain)
    svc("plain", "10.99.100.2", 8080, Protocol.TCP, NatMode.BOTH_NAT, snat_ip="10.99.2.1"),
]
MARKS = {"web": WEB, "dns": DNS, "broad": BROAD}


@dataclass(frozen=True)
class Flow:
    src: str
    dst: str
    proto: str
    port: int
    mark: int          # expected meta mark and ct mark at the LB
    seen_from: str     # source address the destination sees


FLOWS = [
    Flow("10.99.1.2", "10.99.100.1", "tcp", 80, WEB, "10.99.2.1"),     # included, SNAT by ct mark
    Flow("10.99.1.3", "10.99.100.1", "tcp", 80, 0, "10.99.1.3"),       # exclude wins over include
    Flow("10.99.1.3", "10.99.100.1", "tcp", 81, 0, "10.99.1.3"),       # other port: not included
    Flow("10.99.1.2", "10.99.100.2", "udp", 53, DNS, "10.99.1.2"),     # dns first, though broad matches too
    Flow("10.99.1.2", "10.99.100.2", "udp", 54, BROAD, "10.99.1.2"),   # not dns: falls through to broad
    Flow("10.99.1.3", "10.99.100.3", "udp", 9999, 0, "10.99.1.3"),     # broad is for 10.99.1.2 only
    Flow("10.99.1.2", "10.99.100.2", "tcp", 8080, 0, "10.99.2.1"),     # plain both-NAT by VIP
]


class Topology:
    def __init__(self) -> None:
        tag = f"pask-t{os.getpid()}"
        self.client, self.lb, self.dst = f"{tag}-c", f"{tag}-lb", f"{tag}-d"
        self.created: list[str] = []

    def sh(self, ns: str, *cmd: str, stdin: str | None = None) -> str:
        env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
        res = subprocess.run(["ip", "netns", "exec", ns, *cmd], input=stdin, capture_output=True,
                             text=True, env=env, timeout=30)
        if res.returncode:
            raise AssertionError(f"{ns}: {' '.join(cmd)}: {res.stderr or res.stdout}")
        return res.stdout

    def up(self) -> None:
        for ns in (self.client, self.lb, self.dst):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            self.created.append(ns)
            self.sh(ns, "ip", "link", "set", "lo", "up")
        self.sh(self.lb, "ip", "link", "add", "lbc", "type", "veth", "peer", "name", "c0", "netns", self.client)
        self.sh(self.lb, "ip", "link", "add", "lbd", "type", "veth", "peer", "name", "d0", "netns", self.dst)
        for ns, dev, addrs in ((self.client, "c0", ["10.99.1.2/24", "10.99.1.3/24"]),
                               (self.lb, "lbc", ["10.99.1.1/24"]), (self.lb, "lbd", ["10.99.2.1/24"]),
                               (self.dst, "d0", ["10.99.2.2/24"])):
            for a in addrs:
                self.sh(ns, "ip", "addr", "add", a, "dev", dev)
            self.sh(ns, "ip", "link", "set", dev, "up")
        for vip in ("10.99.100.1", "10.99.100.2", "10.99.100.3"):
            self.sh(self.dst, "ip", "addr", "add", f"{vip}/32", "dev", "lo")
        self.sh(self.client, "ip", "route", "add", "default", "via", "10.99.1.1")
        self.sh(self.dst, "ip", "route", "add", "default", "via", "10.99.2.1")
        self.sh(self.lb, "ip", "route", "add", "10.99.100.0/24", "via", "10.99.2.2")
        self.sh(self.lb, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")

    def down(self) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture(scope="module")
def topo():
    if os.geteuid() != 0:
        pytest.fail("traffic tests need root (network namespaces, veths, nftables); "
                    "run as root or deselect with -m 'not netns'", pytrace=False)
    t = Topology()
    try:
        t.up()
        yield t
    finally:
        t.down()


def _match(f: Flow, src: str | None) -> str:
    m = f"ip daddr {f.dst} meta l4proto {f.proto} th dport {f.port}"
    return (f"ip saddr {src} " if src else "") + m


def accounting(flows: list[Flow], where: str) -> str:
    """An ``ip acct`` table. At the LB, per flow: all its packets, and those with
    the expected meta mark and ct mark. At the destination: packets from the
    expected source, and (for SNAT flows) from the client's own address."""
    rules = []
    for i, f in enumerate(flows):
        if where == "lb":
            rules.append(f"{_match(f, f.src)} counter comment \"all {i}\"")
            rules.append(f"{_match(f, f.src)} meta mark {f.mark} ct mark {f.mark} counter comment \"ok {i}\"")
        else:   # flows share a VIP:port, so tell them apart by source
            rules.append(f"{_match(f, f.seen_from)} counter comment \"ok {i}\"")
            if f.seen_from != f.src:
                rules.append(f"{_match(f, f.src)} counter comment \"unsnat {i}\"")
    hook = "forward" if where == "lb" else "input"
    body = "\n".join("        " + r for r in rules)
    return f"table ip acct {{\n    chain c {{\n        type filter hook {hook} priority 0; policy accept;\n{body}\n    }}\n}}\n"


def counters(topo: Topology, ns: str, table: str) -> dict[str, int]:
    """Packets counted by each commented rule of ``table``."""
    out = json.loads(topo.sh(ns, "nft", "-j", "list", "table", *table.split()))
    return {o["rule"]["comment"]: sum(s["counter"]["packets"] for s in o["rule"]["expr"] if "counter" in s)
            for o in out["nftables"] if "rule" in o and o["rule"].get("comment")}


CLIENT = textwrap.dedent("""
    import json, socket, sys
    for src, dst, proto, port in json.loads(sys.argv[1]):
        if proto == "tcp":
            s = socket.socket(); s.settimeout(2); s.bind((src, 0))
            try:
                s.connect((dst, port))
            except ConnectionRefusedError:
                pass                        # the SYN went through; nobody listens
            s.close()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((src, 0))
            for _ in range(2):
                s.sendto(b"pask", (dst, port))
            s.close()
""")


def test_included_traffic_is_marked_excluded_is_not_and_snat_applies(topo: Topology):
    table = render_table(SERVICES, MARKS)
    assert table is not None
    loaded = topo.sh(topo.lb, sys.executable, "-c",
                     "import sys; from pask_ipvs.backend.nft import NftLib; from pask_ipvs.objects import NftTable;"
                     "print(NftLib().replace(NftTable(sys.stdin.read())).comment)", stdin=table.commands)
    assert loaded.strip() == table.digest
    topo.sh(topo.lb, "nft", "-f", "-", stdin=accounting(FLOWS, "lb"))
    topo.sh(topo.dst, "nft", "-f", "-", stdin=accounting(FLOWS, "dst"))

    topo.sh(topo.client, sys.executable, "-c", CLIENT,
            json.dumps([[f.src, f.dst, f.proto, f.port] for f in FLOWS]))

    lb, dst = counters(topo, topo.lb, "ip acct"), counters(topo, topo.dst, "ip acct")
    for i, f in enumerate(FLOWS):
        assert lb[f"all {i}"] > 0, f"{f}: never reached the LB's forward hook"
        assert lb[f"ok {i}"] == lb[f"all {i}"], f"{f}: wrong fwmark at the LB"
        assert dst[f"ok {i}"] > 0, f"{f}: never reached the destination from {f.seen_from}"
        assert dst.get(f"unsnat {i}", 0) == 0, f"{f}: reached the destination without SNAT"

    # pask's own counters: web's exclude and include rules both counted
    web = json.loads(topo.sh(topo.lb, "nft", "-j", "list", "chain", "inet", "pask", "svc_web"))
    exclude, include = [o["rule"] for o in web["nftables"] if "rule" in o]
    packets = [sum(s["counter"]["packets"] for s in r["expr"] if "counter" in s) for r in (exclude, include)]
    assert all(p > 0 for p in packets), packets


def test_a_failed_replace_keeps_marking(topo: Topology):
    """The old table goes on steering traffic when a new one is refused."""
    table = render_table(SERVICES, MARKS)
    script = ("import sys; from pask_ipvs.backend.nft import NftLib; from pask_ipvs.objects import NftTable;"
              "import kernel_cases; NFT_REFUSALS = kernel_cases.NFT_REFUSALS; from pask_ipvs.backend.base import BackendError\n"
              "b = NftLib(); b.replace(NftTable(sys.stdin.read()))\n"
              "try:\n    b.replace(NftTable.from_commands(NFT_REFUSALS['jump to a missing chain'][0]))\n"
              "except BackendError as e:\n    print('refused', e.errno)\n")
    assert topo.sh(topo.lb, sys.executable, "-c", script, stdin=table.commands).startswith("refused")
    topo.sh(topo.lb, "nft", "flush", "ruleset")  # accounting only from here on; pask reloaded below
    topo.sh(topo.lb, sys.executable, "-c", script, stdin=table.commands)
    flows = [FLOWS[0], FLOWS[3]]
    topo.sh(topo.lb, "nft", "-f", "-", stdin=accounting(flows, "lb"))
    topo.sh(topo.client, sys.executable, "-c", CLIENT, json.dumps([[f.src, f.dst, f.proto, f.port] for f in flows]))
    lb = counters(topo, topo.lb, "ip acct")
    for i, f in enumerate(flows):
        assert lb[f"ok {i}"] == lb[f"all {i}"] > 0, f
