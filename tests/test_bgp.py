"""bgp: (scale-out behind ECMP): validation with FILE:LINE, BIRD's files, the VIPs
announced, what bgp adds to the kernel state (sloppy_tcp, mh-fallback, the canonical
order of mh servers), pask-apply driving BIRD and pask-healthd withdrawing a VIP, all on
fakes that behave like the kernel."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from builders import config as make_config, rs, svc
from pask_ipvs import bgp as bgp_mod
from pask_ipvs.backend.fake import fake_backends, kernel_writes
from pask_ipvs.bgp_config import Bgp, BgpNeighbor
from pask_ipvs.cli.apply import main as apply_main
from pask_ipvs.desired import expand
from pask_ipvs.health.announce import BgpAnnouncer
from pask_ipvs.health.daemon import HealthDaemon
from pask_ipvs.health.events import EventLog
from pask_ipvs.health.probes import Result
from pask_ipvs.health_file import health_key
from pask_ipvs.load import load_config
from pask_ipvs.mh_order import insertions
from pask_ipvs.model import Health
from pask_ipvs.objects import DestKey, ServiceKey
from pask_ipvs.plan import REORDER, diff
from pask_ipvs.render.bgp import BgpPaths, announce_conf, bird_conf

BGP = """\
version: 1
bgp:
  local_as: 65001
  router_id: 10.99.4.2
  hold_time: 3
  neighbors:
    - {address: 10.99.4.1, as: 65000}
  announce: healthy
services:
  - name: web
    vip: 10.99.100.1
    port: 80
    scheduler: mh
    nat_mode: l3-dsr
    real_servers: [{address: 10.99.5.12}, {address: 10.99.5.11}]
"""
WEB = ServiceKey.virtual("tcp", "10.99.100.1", 80)
PATHS = BgpPaths("/var/lib/pask/bgp")


def messages(problems) -> list[tuple[int, str, str]]:
    return [(p.line, p.path, p.message) for p in problems]


def bgp_of(**kw) -> Bgp:
    return Bgp(**{"local_as": 65001, "router_id": "10.99.4.2",
                  "neighbors": (BgpNeighbor("10.99.4.1", 65000),), **kw})


def mh(name="web", vip="10.99.100.1", servers=None, mode="l3-dsr", **kw):
    servers = [rs("10.99.5.11"), rs("10.99.5.12")] if servers is None else servers
    return svc(name, vip, 80, mode=mode, sched="mh", servers=servers, **kw)


def with_bgp(*services, **kw):
    return dataclasses.replace(make_config(*services), bgp=bgp_of(**kw))


# -- validation ------------------------------------------------------------------------------

def test_a_valid_bgp_block_loads_with_its_defaults(load_text):
    config = load_text(BGP.replace("  hold_time: 3\n", "").replace("  announce: healthy\n", ""))
    assert config.bgp == Bgp(local_as=65001, router_id="10.99.4.2",
                             neighbors=(BgpNeighbor("10.99.4.1", 65000),))
    assert (config.bgp.hold_time, config.bgp.announce, config.bgp.takeover) == (3, "healthy", True)


@pytest.mark.parametrize("old, new, line, path, words", [
    # the bad inputs: AS outside 1..4294967295, the node itself, announce unknown, no mh
    ("local_as: 65001", "local_as: 4294967296", 3, "$.bgp.local_as", "4294967296 is too large (allowed: 1..4294967295)"),
    ("local_as: 65001", "local_as: 0", 3, "$.bgp.local_as", "0 is too small (allowed: 1..4294967295)"),
    ("as: 65000", "as: 4294967296", 7, "$.bgp.neighbors[0].as", "is too large (allowed: 1..4294967295)"),
    ("address: 10.99.4.1", "address: 10.99.4.2", 7, "$.bgp.neighbors[0].address",
     "neighbor 10.99.4.2 is this LB itself (its bgp.router_id)"),
    ("announce: healthy", "announce: sometimes", 8, "$.bgp.announce",
     "unknown value 'sometimes' (allowed: healthy, always)"),
    ("scheduler: mh", "scheduler: sh", 13, "$.services[0].scheduler",
     "scheduler sh cannot keep a flow that ECMP moves to another LB on its real server"),
    ("scheduler: mh", "scheduler: wlc", 13, "$.services[0].scheduler", "picks by this LB's own state"),
    ("    scheduler: mh\n", "", 10, "$.services[0]", "scheduler wlc (the default) cannot keep a flow"),
    # NAT modes cannot survive a move: no shared return path
    ("nat_mode: l3-dsr", "nat_mode: dest-nat", 14, "$.services[0].nat_mode",
     "nat_mode dest-nat cannot keep a flow that ECMP moves to another LB"),
    ("nat_mode: l3-dsr", "nat_mode: lan-to-lan\n    local_networks: [10.99.5.0/24]", 14,
     "$.services[0].nat_mode", "no shared return path (with bgp.takeover: true use l3-dsr"),
    ("router_id: 10.99.4.2", "router_id: fd00:99:4::2", 4, "$.bgp.router_id",
     "a BGP router id is a 32-bit number written as an IPv4 address"),
    ("router_id: 10.99.4.2", "router_id: lb1", 4, "$.bgp.router_id", "not an IPv4 or IPv6 address"),
    ("hold_time: 3", "hold_time: 2", 5, "$.bgp.hold_time", "2 is too small (allowed: 3..65535)"),
    ("as: 65000", "as: 23456", 7, "$.bgp.neighbors[0].as", "AS 23456 is AS_TRANS"),
    ("address: 10.99.4.1", "address: 10.99.100.1", 7, "$.bgp.neighbors[0].address",
     "neighbor 10.99.100.1 is the VIP of service 'web'"),
    ("vip: 10.99.100.1\n    port: 80\n    scheduler: mh\n    nat_mode: l3-dsr\n    real_servers: "
     "[{address: 10.99.5.12}, {address: 10.99.5.11}]",
     "vip: 'fd00:99:100::1'\n    port: 80\n    scheduler: mh\n    nat_mode: l3-dsr\n    real_servers: "
     "[{address: 'fd00:99:5::12'}]", 11, "$.services[0].vip",
     "VIP fd00:99:100::1 is IPv6 and no bgp neighbor is"),
    ("{address: 10.99.5.11}", "{address: 10.99.5.11, weight: 0}", 15,
     "$.services[0].real_servers[1].weight", "to take a server out of service: state: disabled"),
    ("    nat_mode: l3-dsr\n", "    nat_mode: l3-dsr\n    on_failure: remove\n", 15,
     "$.services[0].on_failure", "with bgp.takeover: true use on_failure: inhibit, the default"),
    ("    nat_mode: l3-dsr\n", "    nat_mode: l3-dsr\n    persistence: {timeout: 60, netmask: 255.255.255.0}\n",
     15, "$.services[0].persistence.netmask", "netmask 255.255.255.0: a client network goes"),
    ("scheduler: mh", "scheduler: mh-port\n    persistence: {timeout: 60}", 13, "$.services[0].scheduler",
     "mh-port with persistence"),
    ("bgp:\n", "ha: {virtual_router_id: 1, peer_link: eth2, nodes: [{name: a, address: 10.99.3.1, priority: 2}, "
               "{name: b, address: 10.99.3.2, priority: 1}], floating_addresses: [{address: 10.99.100.254/24, "
               "interface: eth0}]}\nbgp:\n", 3, "$.bgp", "bgp and ha cannot be used together"),
])
def test_bad_bgp_input_is_refused_with_its_line(problems_of, old, new, line, path, words):
    assert old in BGP
    found = messages(problems_of(BGP.replace(old, new, 1)))
    assert [(ln, p) for ln, p, _ in found] == [(line, path)], found
    assert words in found[0][2], found[0][2]


def test_every_problem_is_reported_at_once(problems_of):
    text = (BGP.replace("local_as: 65001", "local_as: 0").replace("address: 10.99.4.1", "address: 10.99.4.2")
            .replace("announce: healthy", "announce: never").replace("scheduler: mh", "scheduler: rr"))
    assert [p.path for p in problems_of(text)] == [
        "$.bgp.local_as", "$.bgp.neighbors[0].address", "$.bgp.announce", "$.services[0].scheduler"]


def test_the_nat_mode_message_says_what_to_use_instead(problems_of):
    [p] = problems_of(BGP.replace("nat_mode: l3-dsr", "nat_mode: both-nat\n    snat_ip: 10.99.5.1"))
    assert "snat_ip of the LB that translated the flow" in p.message
    assert "or set bgp.takeover: false, and flows on a lost LB are reset" in p.message


def test_without_takeover_any_mode_and_scheduler_is_allowed(load_text):
    text = BGP.replace("announce: healthy", "announce: always\n  takeover: false") \
              .replace("scheduler: mh", "scheduler: wlc").replace("nat_mode: l3-dsr", "nat_mode: dest-nat")
    config = load_text(text)
    assert config.bgp.takeover is False and config.bgp.announce == "always"


def test_duplicate_neighbors_and_ipv6_sessions(problems_of, load_text):
    two = BGP.replace("    - {address: 10.99.4.1, as: 65000}\n",
                      "    - {address: 10.99.4.1, as: 65000}\n    - {address: 10.99.4.1, as: 65002}\n")
    assert messages(problems_of(two))[0][:2] == (8, "$.bgp.neighbors[1].address")
    six = BGP.replace("    - {address: 10.99.4.1, as: 65000}\n",
                      "    - {address: 10.99.4.1, as: 65000}\n    - {address: 'fd00:99:4::1', as: 65000}\n") \
             .replace("vip: 10.99.100.1", "vip: 'fd00:99:100::1'").replace("10.99.5.1", "fd00:99:5::1")
    assert load_text(six).bgp.families == {4, 6}


# -- BIRD's files ----------------------------------------------------------------------------

def test_bird_conf_has_the_session_timers_and_exports_only_the_vips():
    conf = bird_conf(bgp_of(hold_time=9), PATHS)
    for line in ["router id 10.99.4.2;", 'include "/var/lib/pask/bgp/announce.conf";',
                 "protocol bgp peer_10_99_4_1 {", "    local as 65001;", "    neighbor 10.99.4.1 as 65000;",
                 "    hold time 9;", "    keepalive time 3;", "    graceful restart off;",
                 "    ipv4 {", "        import none;", '        export where proto = "pask_vips4";',
                 "        next hop self;"]:
        assert line + "\n" in conf, line
    assert "protocol kernel" not in conf          # never touches this LB's own routes


def test_an_ipv6_neighbor_gets_an_ipv6_channel_and_its_own_static_protocol():
    b = bgp_of(neighbors=(BgpNeighbor("10.99.4.1", 65000), BgpNeighbor("fd00:99:4::1", 65000)))
    conf = bird_conf(b, PATHS)
    assert "protocol bgp peer_fd00_99_4__1 {" in conf and 'export where proto = "pask_vips6";' in conf
    text = announce_conf(b.families, ["fd00:99:100::1", "10.99.100.2", "10.99.100.1"])
    assert text.splitlines()[1:] == [
        "protocol static pask_vips4 {", "    ipv4;", "    route 10.99.100.1/32 blackhole;",
        "    route 10.99.100.2/32 blackhole;", "}",
        "protocol static pask_vips6 {", "    ipv6;", "    route fd00:99:100::1/128 blackhole;", "}"]
    assert announce_conf({4}, []).splitlines()[1:] == ["protocol static pask_vips4 {", "    ipv4;", "}"]


@pytest.mark.skipif(shutil.which("bird") is None, reason="BIRD 2 (bird2) is not installed")
def test_bird_accepts_the_rendered_files(tmp_path):
    b = bgp_of(neighbors=(BgpNeighbor("10.99.4.1", 65000), BgpNeighbor("fd00:99:4::1", 4200000000)))
    paths = BgpPaths(str(tmp_path))
    Path(paths.conf).write_text(bird_conf(b, paths))
    Path(paths.announce).write_text(announce_conf(b.families, ["10.99.100.1", "fd00:99:100::1"]))
    done = subprocess.run(["bird", "-p", "-c", paths.conf], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    Path(paths.announce).write_text(announce_conf(b.families, []))
    assert subprocess.run(["bird", "-p", "-c", paths.conf]).returncode == 0


def test_the_engine_runs_bird_on_its_own_socket_beside_the_state_file():
    config = with_bgp(mh())
    e = bgp_mod.engines(config, "/run/lab/lb1/state.json")["bird"]
    assert e.argv == ("bird", "-c", "/run/lab/lb1/bgp/bird.conf", "-s", "/run/lab/lb1/bgp/bird.ctl",
                      "-P", "/run/lab/lb1/bgp/bird.pid")
    assert e.foreground_argv == (*e.argv, "-f") and e.reload == "hup"
    assert [f.path for f in e.files] == ["/run/lab/lb1/bgp/bird.conf", "/run/lab/lb1/bgp/announce.conf"]


# -- the VIPs announced ----------------------------------------------------------------------

def test_a_vip_is_announced_while_a_service_of_it_has_a_usable_server():
    web = mh(health=Health(type="tcp"))
    api = mh("api", "10.99.100.2", servers=[rs("10.99.5.13")])
    config = with_bgp(web, api)
    down = {health_key("web", "10.99.5.11", 80): False}
    assert bgp_mod.announced_vips(config, down) == ("10.99.100.1", "10.99.100.2")
    down[health_key("web", "10.99.5.12", 80)] = False
    assert bgp_mod.announced_vips(config, down) == ("10.99.100.2",)
    assert bgp_mod.announced_vips(dataclasses.replace(config, bgp=bgp_of(announce="always")), down) \
        == ("10.99.100.1", "10.99.100.2")


def test_a_backup_server_keeps_the_vip_announced_and_disabled_ones_do_not():
    sorry = mh(servers=[rs("10.99.5.11"), rs("10.99.5.19", state="backup")])
    config = with_bgp(sorry)
    assert bgp_mod.announced_vips(config, {health_key("web", "10.99.5.11", 80): False}) == ("10.99.100.1",)
    drained = with_bgp(mh(servers=[rs("10.99.5.11", state="disabled")]))
    assert bgp_mod.announced_vips(drained, {}) == ()
    assert bgp_mod.announced_vips(with_bgp(mh(servers=[])), {}) == ()


def test_two_services_on_one_vip_announce_it_once_while_either_is_usable():
    tls = svc("web443", "10.99.100.1", 443, mode="l3-dsr", sched="mh", servers=[rs("10.99.5.13", 443)])
    config = with_bgp(mh(), tls)
    down = {health_key("web", "10.99.5.11", 80): False, health_key("web", "10.99.5.12", 80): False}
    assert bgp_mod.announced_vips(config, down) == ("10.99.100.1",)


# -- what bgp adds to the kernel state -------------------------------------------------------

def test_sloppy_tcp_mh_fallback_and_the_canonical_order_and_weights():
    servers = [rs("10.99.5.13", weight=3), rs("10.99.5.2", weight=1), rs("10.99.5.11", weight=2, state="disabled")]
    desired = expand(with_bgp(mh(servers=servers)), {}, {})
    assert desired.sysctls["net.ipv4.vs.sloppy_tcp"] == "1" and "net.ipv4.vs.sloppy_sctp" not in desired.sysctls
    assert desired.services[WEB].flags == frozenset({"mh-fallback"})
    assert [(k.addr, w) for k, w in desired.canonical_dests[WEB]] == [
        ("10.99.5.2", 1), ("10.99.5.11", 2), ("10.99.5.13", 3)]          # by address bytes
    assert desired.dests[DestKey(WEB, "10.99.5.11", 80)].weight == 0     # disabled: drained


def test_no_takeover_no_sloppy_and_sctp_gets_its_own():
    assert "net.ipv4.vs.sloppy_tcp" not in expand(with_bgp(mh(), takeover=False), {}, {}).sysctls
    sctp = svc("s", "10.99.100.3", 80, proto="sctp", mode="l2-dsr", sched="mh")
    assert expand(with_bgp(sctp), {}, {}).sysctls["net.ipv4.vs.sloppy_sctp"] == "1"
    plain = expand(make_config(mh()), {}, {})
    assert plain.canonical_dests == {} and plain.services[WEB].flags == frozenset()


# -- the canonical order in the kernel -------------------------------------------------------

def kernel_list_after(have: list, want: list, seq: list) -> list:
    """The kernel's list (head first) after re-adding/adding ``seq`` at the head."""
    out = [k for k in have if k in want]
    for k in seq:
        if k in out:
            out.remove(k)
        out.insert(0, k)
    return out


@pytest.mark.parametrize("want, have, expected", [
    ("abc", "", "abc"),                   # a new service: ascending, so the list reads c b a
    ("abc", "cba", ""),                   # in order: nothing moves
    ("abcd", "cba", "d"),                 # a server above the others: added at the head, alone
    ("abc", "cb", "abc"),                 # one below: the ones above it go in again after it
    ("abcd", "dba", "cd"),                # one in between: those above it move
    ("abc", "cxba", ""),                  # x is deleted elsewhere: the rest stays
    ("abc", "bca", "c"),                  # out of order (a scheduler became mh)
])
def test_insertions(want, have, expected):
    seq = insertions(list(want), list(have))
    assert "".join(seq) == expected
    assert kernel_list_after(list(have), list(want), seq) == list(reversed(want))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 12), unique=True), st.lists(st.integers(0, 12), unique=True))
def test_insertions_always_end_in_canonical_order_and_keep_the_longest_tail(want, have):
    want = sorted(want)
    seq = insertions(want, have)
    assert kernel_list_after(have, want, seq) == list(reversed(want))
    kept = len(want) - len(seq)
    for longer in range(kept + 1, len(want) + 1):      # no longer tail is already in place
        tail = list(reversed(want))[len(want) - longer:]
        present = [k for k in have if k in want]
        it = iter(present)
        assert not all(k in it for k in tail)


class LB:
    """One LB on a fake kernel, driven by pask-apply."""

    def __init__(self, tmp: Path):
        self.kernel = fake_backends()
        self.dir = tmp
        self.state = tmp / "state" / "state.json"
        self.paths = BgpPaths.for_state_file(str(self.state))

    def apply(self, text: str, *flags: str, expect: int = 0, capsys=None) -> str:
        path = self.dir / "pask.yaml"
        path.write_text(text)
        rc = apply_main([*flags, "--state-file", str(self.state), "--health-file",
                         str(self.dir / "health.json"), str(path)], backends=lambda: self.kernel)
        out = capsys.readouterr() if capsys else None
        assert rc == expect, out
        return (out.out + out.err) if out else ""

    def order(self, key: ServiceKey = WEB) -> list[str]:
        return [k.addr for k in self.kernel.ipvs.observe().dests if k.service == key]


def servers_text(*addrs: str) -> str:
    return BGP.replace("real_servers: [{address: 10.99.5.12}, {address: 10.99.5.11}]",
                       "real_servers: [" + ", ".join(f"{{address: {a}}}" for a in addrs) + "]")


def test_servers_go_in_ascending_so_the_kernel_lists_them_descending(tmp_path, capsys):
    lb = LB(tmp_path)
    out = lb.apply(servers_text("10.99.5.13", "10.99.5.11", "10.99.5.12"), capsys=capsys)
    assert lb.order() == ["10.99.5.13", "10.99.5.12", "10.99.5.11"]
    adds = [line for line in out.splitlines() if line.startswith("+ dest")]
    assert [a.split("-> ")[1].split(":")[0] for a in adds] == ["10.99.5.11", "10.99.5.12", "10.99.5.13"]
    assert "+ service web 10.99.100.1:80/tcp mh mh-fallback" in out


def test_a_server_below_the_others_moves_those_above_it_and_every_lb_agrees(tmp_path, capsys):
    old, new = LB(tmp_path / "a"), LB(tmp_path / "b")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    old.apply(servers_text("10.99.5.12", "10.99.5.13"), capsys=capsys)
    out = old.apply(servers_text("10.99.5.11", "10.99.5.12", "10.99.5.13"), capsys=capsys)
    assert "- dest web 10.99.100.1:80/tcp -> 10.99.5.12:80 tunnel weight 1  (mh order)" in out
    assert "+ dest web 10.99.100.1:80/tcp -> 10.99.5.12:80 tunnel weight 1  (mh order)" in out
    new.apply(servers_text("10.99.5.13", "10.99.5.12", "10.99.5.11"), capsys=capsys)   # a fresh LB
    assert old.order() == new.order() == ["10.99.5.13", "10.99.5.12", "10.99.5.11"]
    before = kernel_writes(old.kernel)
    assert "No changes" in old.apply(servers_text("10.99.5.11", "10.99.5.12", "10.99.5.13"), capsys=capsys)
    assert kernel_writes(old.kernel) == before
    # a server above the others: one add, nothing moves
    out = old.apply(servers_text("10.99.5.11", "10.99.5.12", "10.99.5.13", "10.99.5.14"), capsys=capsys)
    assert "mh order" not in out and old.order()[0] == "10.99.5.14"


def test_a_down_server_gets_its_table_slots_before_its_weight_goes_to_zero(tmp_path, capsys):
    lb = LB(tmp_path)
    (tmp_path / "health.json").write_text(json.dumps({"version": 1, "servers": {
        "web/10.99.5.11:80": {"up": False, "since": 1, "detail": "refused"}}}))
    out = lb.apply(BGP, capsys=capsys)
    assert "+ dest web 10.99.100.1:80/tcp -> 10.99.5.11:80 tunnel weight 1\n" in out
    assert "~ dest web 10.99.100.1:80/tcp -> 10.99.5.11:80 weight 1 -> 0  (mh slots)" in out
    ops = [(op.action, op.after.weight) for op in lb.kernel.ipvs.applied
           if op.kind == "dest" and op.after is not None and op.after.addr == "10.99.5.11"]
    assert ops == [("add", 1), ("set", 0)]


def test_reorder_ops_run_in_order_among_the_adds():
    config = with_bgp(mh(servers=[rs("10.99.5.11"), rs("10.99.5.12"), rs("10.99.5.13")]))
    kernel = fake_backends()
    desired = expand(with_bgp(mh(servers=[rs("10.99.5.12"), rs("10.99.5.13")])), {}, {})
    kernel.ipvs.apply(diff(desired, kernel_observed(kernel, desired)).ops)
    desired = expand(config, {}, {})
    plan = diff(desired, kernel_observed(kernel, desired))
    dest_ops = [(op.action, op.after.addr if op.after else op.before.addr, op.reason)
                for op in plan.ops if op.kind == "dest"]
    assert dest_ops == [("add", "10.99.5.11", ""), ("delete", "10.99.5.12", REORDER),
                        ("add", "10.99.5.12", REORDER), ("delete", "10.99.5.13", REORDER),
                        ("add", "10.99.5.13", REORDER)]


def kernel_observed(kernel, desired):
    from pask_ipvs.observe import observe
    return observe(desired, kernel)


# -- pask-apply drives BIRD ------------------------------------------------------------------

def test_apply_starts_bird_after_the_services_and_a_second_apply_changes_nothing(tmp_path, capsys):
    lb = LB(tmp_path)
    out = lb.apply(BGP, capsys=capsys)
    assert "+ engine bird (start; writes bird.conf, announce.conf)" in out
    lines = out.splitlines()
    assert lines.index("+ engine bird (start; writes bird.conf, announce.conf)") > max(
        i for i, line in enumerate(lines) if line.startswith("+ dest"))
    engines = lb.kernel.engines
    assert engines.actions == [("start", "bird")]
    assert "route 10.99.100.1/32 blackhole;" in engines.files[lb.paths.announce].content
    assert json.loads(lb.state.read_text())["engines"]["bird"]["argv"][0] == "bird"
    before = kernel_writes(lb.kernel)
    assert "No changes" in lb.apply(BGP, "--detailed-exitcode", capsys=capsys)
    assert kernel_writes(lb.kernel) == before


def test_a_vip_whose_servers_are_all_down_is_withdrawn_by_the_next_apply(tmp_path, capsys):
    lb = LB(tmp_path)
    lb.apply(BGP, capsys=capsys)
    (tmp_path / "health.json").write_text(json.dumps({"version": 1, "servers": {
        f"web/10.99.5.{i}:80": {"up": False, "since": 1, "detail": "x"} for i in (11, 12)}}))
    out = lb.apply(BGP, capsys=capsys)
    assert "~ engine bird announce.conf changed (reload)" in out
    assert "blackhole" not in lb.kernel.engines.files[lb.paths.announce].content
    assert lb.kernel.engines.actions[-1] == ("reload", "bird")


def test_removing_a_service_withdraws_its_vip_before_the_service_goes(tmp_path, capsys):
    lb = LB(tmp_path)
    two = BGP + "  - {name: api, vip: 10.99.100.2, port: 80, scheduler: mh, nat_mode: l3-dsr, " \
                "real_servers: [{address: 10.99.5.13}]}\n"
    lb.apply(two, capsys=capsys)
    out = lb.apply(BGP, capsys=capsys).splitlines()
    assert out.index("~ engine bird announce.conf changed (reload)") < \
        out.index("- service api 10.99.100.2:80/tcp mh mh-fallback")


def test_removing_bgp_stops_bird(tmp_path, capsys):
    lb = LB(tmp_path)
    lb.apply(BGP, capsys=capsys)
    plain = BGP[:BGP.index("bgp:")] + BGP[BGP.index("services:"):]
    out = lb.apply(plain, capsys=capsys)
    assert "- engine bird (stop)" in out and lb.kernel.engines.running == {}


def test_a_missing_bird_names_its_package_and_nothing_changes(tmp_path, capsys):
    lb = LB(tmp_path)
    lb.kernel.engines.installed = set()
    out = lb.apply(BGP, expect=1, capsys=capsys)
    assert "bgp: needs bird, which is not installed: install the Debian package bird2" in out
    assert kernel_writes(lb.kernel) == 0


def test_a_bad_config_changes_nothing(tmp_path, capsys):
    lb = LB(tmp_path)
    lb.apply(BGP, capsys=capsys)
    before = (kernel_writes(lb.kernel), dict(lb.kernel.engines.files))
    out = lb.apply(BGP.replace("local_as: 65001", "local_as: 4294967296"), expect=1, capsys=capsys)
    assert f"{tmp_path / 'pask.yaml'}:3: $.bgp.local_as: 4294967296 is too large" in out
    assert "nothing was changed" in out
    assert (kernel_writes(lb.kernel), dict(lb.kernel.engines.files)) == before


# -- pask-healthd withdraws and announces ------------------------------------------------------

class Probe:
    def __init__(self):
        self.ok: dict[str, bool] = {}

    async def __call__(self, health, target):
        ok = self.ok.get(target.addr, True)
        return Result(ok, "ok" if ok else "refused", 0.001)


def test_healthd_withdraws_the_vip_when_its_last_server_fails_and_announces_it_again(tmp_path):
    config = with_bgp(mh(health=Health(type="tcp", rise=1, fall=1)))
    kernel = fake_backends()
    desired = expand(config, {}, {})
    kernel.ipvs.seed(desired.services.values(), desired.dests.values())
    state = str(tmp_path / "state.json")
    paths = BgpPaths.for_state_file(state)
    kernel.engines.start(bgp_mod.engines(config, state)["bird"])     # what pask-apply started
    log = EventLog(stream=io.StringIO())
    probe = Probe()
    daemon = HealthDaemon(config, kernel, probe=probe, log=log, rng=random.Random(1),
                          health_file=str(tmp_path / "health.json"),
                          announcer=BgpAnnouncer(kernel.engines, state, log))
    asyncio.run(daemon.run_round())
    assert kernel.engines.actions == [("start", "bird")]               # nothing changed
    probe.ok["10.99.5.11"] = False
    asyncio.run(daemon.run_round())
    assert kernel.engines.actions == [("start", "bird")]               # one server is left
    probe.ok["10.99.5.12"] = False
    asyncio.run(daemon.run_round())
    assert kernel.engines.actions[-1] == ("reload", "bird")
    assert "blackhole" not in kernel.engines.files[paths.announce].content
    assert kernel.engines.files[paths.conf].content == bird_conf(config.bgp, paths)  # untouched
    probe.ok["10.99.5.12"] = True
    asyncio.run(daemon.run_round())
    assert "route 10.99.100.1/32 blackhole;" in kernel.engines.files[paths.announce].content
    events = [json.loads(line) for line in log.stream.getvalue().splitlines()]
    announced = [e for e in events if e["event"] == "bgp_announce"]
    assert [(e["withdrawn"], e["announced"]) for e in announced] == [
        (["10.99.100.1"], []), ([], ["10.99.100.1"])]


def test_healthd_leaves_a_stopped_bird_to_pask_apply(tmp_path):
    config = with_bgp(mh(health=Health(type="tcp", rise=1, fall=1)))
    kernel = fake_backends()
    log = EventLog(stream=io.StringIO())
    announcer = BgpAnnouncer(kernel.engines, str(tmp_path / "state.json"), log)
    assert announcer.update(config, {}) is False
    assert kernel.engines.actions == [] and kernel.engines.files == {}
    assert "bgp_not_running" in log.stream.getvalue()
    assert BgpAnnouncer(kernel.engines, "s", log).update(make_config(mh()), {}) is False   # no bgp


def test_healthd_puts_back_an_announcement_that_a_racing_apply_overwrote(tmp_path):
    """pask-apply read the health file just before a transition and wrote the older set
    after pask-healthd wrote the newer one: the periodic check restores it."""
    config = with_bgp(mh())
    kernel = fake_backends()
    state = str(tmp_path / "state.json")
    paths = BgpPaths.for_state_file(state)
    old = bgp_mod.engines(config, state)["bird"]
    kernel.engines.start(old)
    log = EventLog(stream=io.StringIO())
    announcer = BgpAnnouncer(kernel.engines, state, log)
    down = {health_key("web", a, 80): False for a in ("10.99.5.11", "10.99.5.12")}
    assert announcer.update(config, down) is True
    kernel.engines.reload(old)                        # the racing pask-apply
    assert "blackhole" in kernel.engines.files[paths.announce].content
    assert announcer.update(config, down) is False    # nothing read: the same set as written
    assert announcer.update(config, down, force=True) is True
    assert "blackhole" not in kernel.engines.files[paths.announce].content


def test_a_stopped_bird_is_reported_once(tmp_path):
    log = EventLog(stream=io.StringIO())
    announcer = BgpAnnouncer(fake_backends().engines, str(tmp_path / "s.json"), log)
    for _ in range(3):
        announcer.update(with_bgp(mh()), {}, force=True)
    assert log.stream.getvalue().count("bgp_not_running") == 1


def test_a_cold_apply_is_verified_by_digests_of_the_kernels_order(tmp_path, capsys):
    """Verify reads an mh service by digests made in the order the kernel lists what the
    plan added (newest first): nothing to decode after a cold apply."""
    lb = LB(tmp_path)
    lb.apply(servers_text("10.99.5.13", "10.99.5.11", "10.99.5.12"), capsys=capsys)
    ipvs = lb.kernel.ipvs
    assert ipvs.expected_digest_calls == 1 and ipvs.observe_services_calls == []
    assert lb.order() == ["10.99.5.13", "10.99.5.12", "10.99.5.11"]


def test_verify_by_digests_sees_an_mh_list_in_another_order(tmp_path, capsys, monkeypatch):
    """Every dest right but the kernel's list in another order: the digest differs, that
    service is decoded, and verify reports the re-adds a full read-back would."""
    lb = LB(tmp_path)
    real_apply = lb.kernel.ipvs.apply

    def apply_then_reverse(ops):
        errors = real_apply(ops)
        dests = lb.kernel.ipvs.dests.get(WEB)
        if dests:
            lb.kernel.ipvs.dests[WEB] = dict(reversed(dests.items()))
        return errors

    monkeypatch.setattr(lb.kernel.ipvs, "apply", apply_then_reverse)
    out = lb.apply(servers_text("10.99.5.13", "10.99.5.11", "10.99.5.12"), expect=1, capsys=capsys)
    assert "verify: the kernel still differs from the config after apply" in out
    assert "(mh order)" in out
    assert lb.kernel.ipvs.observe_services_calls == [[WEB]]
