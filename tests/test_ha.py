"""ha: (an active/standby pair): validation with FILE:LINE, which node this is, where each
address floats, the engines' files, and pask-apply driving engines and sync daemons on
a kernel that behaves like the real one (fakes)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from pask_ipvs import ha as ha_mod
from pask_ipvs.backend.fake import fake_backends, kernel_writes
from pask_ipvs.cli.apply import main as apply_main
from pask_ipvs.cli.status import main as status_main
from pask_ipvs.model import Ha, HaNode
from pask_ipvs.objects import LinkObserved, SyncDaemon, VipAddress
from pask_ipvs.render.ha import EnginePaths, conntrackd_conf, keepalived_conf, notify_script

HA = """\
version: 1
ha:
  virtual_router_id: 51
  peer_link: eth2
  nodes:
    - {name: lb1, address: 10.99.3.1, priority: 200}
    - {name: lb2, address: 10.99.3.2, priority: 100}
  floating_addresses:
    - {address: 10.99.1.1/24, interface: eth0}
    - {address: 10.99.2.1/24, interface: eth1}
services:
  - name: web
    vip: 10.99.1.100
    port: 80
    nat_mode: both-nat
    snat_ip: 10.99.2.1
    real_servers: [{address: 10.99.2.11}, {address: 10.99.2.12}]
"""


def messages(problems) -> list[tuple[int, str, str]]:
    return [(p.line, p.path, p.message) for p in problems]


# -- validation ------------------------------------------------------------------------------

def test_a_valid_pair_loads_with_the_defaults(load_text):
    config = load_text(HA)
    assert config.ha == Ha(virtual_router_id=51, peer_link="eth2",
                           nodes=(HaNode("lb1", "10.99.3.1", 200), HaNode("lb2", "10.99.3.2", 100)),
                           floating_addresses=config.ha.floating_addresses)
    assert (config.ha.advert_interval, config.ha.preempt, config.ha.sync_connections) == (1, False, True)
    assert [str(f) for f in config.ha.floating_addresses] == ["10.99.1.1/24 on eth0", "10.99.2.1/24 on eth1"]


@pytest.mark.parametrize("old, new, line, path, words", [
    ("priority: 100", "priority: 200", 7, "$.ha.nodes[1].priority", "priority 200 is also node 'lb1'"),
    ("{name: lb2,", "{name: lb1,", 7, "$.ha.nodes[1].name", "name lb1 is also node 'lb1'"),
    ("address: 10.99.3.2", "address: 10.99.3.1", 7, "$.ha.nodes[1].address",
     "address 10.99.3.1 is also node 'lb1'"),
    ("virtual_router_id: 51", "virtual_router_id: 256", 3, "$.ha.virtual_router_id", "256 is too large (allowed: 1..255)"),
    ("virtual_router_id: 51", "virtual_router_id: 0", 3, "$.ha.virtual_router_id", "0 is too small (allowed: 1..255)"),
    ("address: 10.99.3.2", "address: fd00:99:3::2", 5, "$.ha.nodes", "different families"),
    ("10.99.1.1/24", "10.99.1.1", 9, "$.ha.floating_addresses[0].address", "has no prefix length"),
    ("10.99.2.1/24", "10.99.1.1/24", 10, "$.ha.floating_addresses[1].address",
     "10.99.1.1 is already floating_addresses[0] (line 9)"),
    ("vip: 10.99.1.100", "vip: 10.99.100.1", 13, "$.services[0].vip",
     "VIP 10.99.100.1 is in no network of ha.floating_addresses (10.99.1.1/24 on eth0, 10.99.2.1/24 on eth1)"),
    ("snat_ip: 10.99.2.1", "snat_ip: 10.99.2.5", 16, "$.services[0].snat_ip",
     "snat_ip 10.99.2.5 does not move with the active node"),
])
def test_a_pair_that_cannot_work_is_refused_with_its_line(problems_of, old, new, line, path, words):
    assert old in HA
    found = messages(problems_of(HA.replace(old, new, 1)))
    assert [(ln, p) for ln, p, _ in found] == [(line, path)], found
    assert words in found[0][2]


def test_a_pair_needs_exactly_two_nodes(problems_of):
    text = HA.replace("    - {name: lb2, address: 10.99.3.2, priority: 100}\n", "")
    (line, path, msg), = messages(problems_of(text))
    assert (line, path) == (5, "$.ha.nodes")
    assert msg == "1 item is not allowed (allowed: at least 2 items: a list of the pair's two nodes)"


def test_ha_key_typos_are_named(problems_of):
    (line, path, msg), = messages(problems_of(HA.replace("peer_link: eth2", "peer_link: eth2\n  preemt: true")))
    assert (line, path) == (5, "$.ha.preemt")


def test_a_snat_ip_that_is_a_vip_moves_with_the_pair(load_text):
    load_text(HA.replace("snat_ip: 10.99.2.1", "snat_ip: 10.99.1.100"))


# -- which node, what floats where -----------------------------------------------------------

def pair(**changes) -> Ha:
    base = dict(virtual_router_id=51, peer_link="eth2",
                nodes=(HaNode("lb1", "10.99.3.1", 200), HaNode("lb2", "10.99.3.2", 100)))
    return Ha(**{**base, **changes})


def test_a_node_finds_itself_by_its_peer_link_address():
    assert ha_mod.find_node(pair(), None, ["10.99.3.2"]).name == "lb2"
    assert ha_mod.find_node(pair(), "lb1", ["10.99.3.1", "10.99.3.9"]).name == "lb1"


@pytest.mark.parametrize("name, held, words", [
    (None, [], "holds none of the nodes' addresses on peer_link eth2"),
    (None, ["10.99.3.1", "10.99.3.2"], "holds both"),
    ("lb1", ["10.99.3.2"], "node lb1's address 10.99.3.1 is not on peer_link eth2"),
    ("lb3", ["10.99.3.1"], "--node lb3: the config's ha.nodes are lb1 10.99.3.1, lb2 10.99.3.2"),
])
def test_a_host_that_is_no_node_is_told_why(name, held, words):
    with pytest.raises(ha_mod.NodeError, match=words):
        ha_mod.find_node(pair(), name, held)


def test_every_vip_floats_on_the_interface_of_its_network(load_text):
    text = HA.replace("services:\n", "services:\n  - {name: v6, vip: 'fd00:99:1::100', port: 80, "
                      "real_servers: [{address: 'fd00:99:2::11'}]}\n").replace(
        "    - {address: 10.99.2.1/24, interface: eth1}\n",
        "    - {address: 10.99.2.1/24, interface: eth1}\n    - {address: 'fd00:99:1::1/64', interface: eth0}\n")
    text += "  - {name: web2, vip: 10.99.1.100, port: 81, real_servers: [{address: 10.99.2.11}]}\n"
    config = load_text(text)
    assert [str(a) for a in ha_mod.floating(config.ha)] == [
        "10.99.1.1/24 dev eth0", "10.99.2.1/24 dev eth1", "fd00:99:1::1/64 dev eth0"]
    assert [str(a) for a in ha_mod.vip_addresses(config)] == [
        "fd00:99:1::100/128 dev eth0", "10.99.1.100/32 dev eth0"]


def test_the_peer_link_is_never_tracked():
    from pask_ipvs.model import FloatingAddress
    ha = pair(floating_addresses=(FloatingAddress("10.99.1.1", 24, "eth0"),
                                  FloatingAddress("10.99.3.9", 24, "eth2")))
    assert ha_mod.tracked_interfaces(ha) == ["eth0"]


def test_both_sync_threads_run_on_the_peer_link_with_the_router_id():
    assert ha_mod.sync_daemons(pair()) == {SyncDaemon("master", "eth2", 51), SyncDaemon("backup", "eth2", 51)}
    assert ha_mod.sync_daemons(pair(sync_connections=False)) == frozenset()


# -- rendered files ---------------------------------------------------------------------------

PATHS = EnginePaths("/var/lib/pask/ha")


def test_keepalived_moves_addresses_only_and_never_preempts_by_default():
    node, peer = pair().nodes
    floating = [VipAddress("eth0", "10.99.1.1", 24), VipAddress("eth0", "fd00:99:1::1", 64)]
    vips = [VipAddress("eth0", "10.99.1.100", 32), VipAddress("eth0", "fd00:99:1::100", 128)]
    conf = keepalived_conf(pair(), node, peer, floating, ["eth0", "eth1"], PATHS, vips)
    body = textwrap.dedent(conf[conf.index("vrrp_instance"):])
    assert "virtual_server" not in conf and "lvs_sync_daemon" not in conf
    for line in ["state BACKUP", "interface eth2", "virtual_router_id 51", "priority 200",
                 "advert_int 1", "nopreempt", "unicast_src_ip 10.99.3.1",
                 "unicast_peer {\n        10.99.3.2\n    }",
                 "track_interface {\n        eth0\n        eth1\n    }",
                 # the adverts carry the floating addresses only: a VIP added on one node
                 # first must not make the nodes drop each other's adverts
                 "virtual_ipaddress {\n        10.99.1.1/24 dev eth0\n    }",
                 "virtual_ipaddress_excluded {\n        fd00:99:1::1/64 dev eth0\n"
                 "        10.99.1.100/32 dev eth0\n        fd00:99:1::100/128 dev eth0\n    }",
                 "notify /var/lib/pask/ha/notify.sh"]:
        assert line in body, line
    preempting = keepalived_conf(pair(preempt=True, preempt_delay=7), node, peer, floating, [], PATHS)
    assert "preempt_delay 7" in preempting and "nopreempt" not in preempting
    assert "track_interface" not in preempting


def test_notify_records_the_role_and_moves_conntrackd_state():
    node, _ = pair().nodes
    script = notify_script(pair(), node, PATHS)
    ct = "conntrackd -C /var/lib/pask/ha/conntrackd.conf"
    assert script.startswith("#!/bin/sh\n")
    assert f"MASTER) {ct} -c; {ct} -f; {ct} -R; {ct} -B ;;" in script
    assert f"BACKUP) {ct} -n ;;" in script and f"FAULT) {ct} -t ;;" in script
    # stale conntrack entries of flows to the VIPs go when the node stops serving them
    script = notify_script(pair(), node, PATHS, ["10.99.1.100", "fd00::1"])
    drop = "conntrack -D -d 10.99.1.100 >/dev/null 2>&1; conntrack -D -f ipv6 -d fd00::1 >/dev/null 2>&1; "
    assert f"BACKUP) {drop}{ct} -n ;;" in script and f"FAULT) {drop}{ct} -t ;;" in script
    assert "> /var/lib/pask/ha/role.tmp && mv -f /var/lib/pask/ha/role.tmp /var/lib/pask/ha/role" in script
    assert "conntrackd" not in notify_script(pair(sync_connections=False), node, PATHS).split("\n", 2)[2]


def test_conntrackd_talks_to_the_peer_only_and_keeps_its_files_in_the_node_dir():
    node, peer = pair().nodes
    conf = conntrackd_conf(pair(), node, peer, PATHS)
    for line in ["Mode FTFW {", "IPv4_address 10.99.3.1", "IPv4_Destination_Address 10.99.3.2",
                 "Interface eth2", "LockFile /var/lib/pask/ha/conntrackd.lock",
                 "Path /var/lib/pask/ha/conntrackd.ctl", "IPv4_address 10.99.3.2\n"]:
        assert line in conf, line
    six = pair(nodes=(HaNode("a", "fd00:99:3::1", 2), HaNode("b", "fd00:99:3::2", 1)))
    assert "IPv6_Destination_Address fd00:99:3::2" in conntrackd_conf(six, six.nodes[0], six.nodes[1], PATHS)


# -- pask-apply with ha, on fakes -------------------------------------------------------------

class Node:
    """One LB of the pair: a fake kernel whose peer_link holds the node's address."""

    def __init__(self, tmp: Path, address: str = "10.99.3.1"):
        self.kernel = fake_backends()
        self.kernel.addr.links["eth2"] = LinkObserved("eth2", "veth", True)
        self.kernel.addr.addrs.add(VipAddress("eth2", address, 24))
        self.dir = tmp
        self.state = tmp / "state" / "state.json"
        self.config = tmp / "pask.yaml"
        self.paths = EnginePaths.for_state_file(str(self.state))

    def apply(self, text: str, *flags: str, expect: int = 0, capsys=None) -> str:
        self.config.write_text(text)
        rc = apply_main([*flags, "--state-file", str(self.state), "--health-file",
                         str(self.dir / "health.json"), str(self.config)], backends=lambda: self.kernel)
        out = capsys.readouterr() if capsys else None
        assert rc == expect, out
        return (out.out + out.err) if out else ""


def test_apply_starts_conntrackd_then_keepalived_and_both_sync_threads(tmp_path, capsys):
    node = Node(tmp_path)
    out = node.apply(HA, capsys=capsys)
    engines = node.kernel.engines
    assert engines.actions == [("start", "conntrackd"), ("start", "keepalived")]
    assert node.kernel.ipvs.observe_sync_daemons() == ha_mod.sync_daemons(pair())
    assert "+ sync master on eth2 syncid 51" in out and "+ engine keepalived (start; writes keepalived.conf, notify.sh)" in out
    # keepalived holds every address; pask puts no VIP on pask0
    assert not any(a.interface == "pask0" for a in node.kernel.addr.addrs)
    conf = engines.files[node.paths.keepalived_conf].content
    assert "10.99.1.100/32 dev eth0" in conf.split("virtual_ipaddress_excluded")[1] and "priority 200" in conf
    assert engines.files[node.paths.notify].mode == 0o755
    state = json.loads(node.state.read_text())
    assert sorted(state["engines"]) == ["conntrackd", "keepalived"]
    assert state["sync_daemons"] == [["backup", "eth2", 51], ["master", "eth2", 51]]


def test_the_other_node_renders_its_own_side(tmp_path, capsys):
    node = Node(tmp_path, "10.99.3.2")
    node.apply(HA, capsys=capsys)
    conf = node.kernel.engines.files[node.paths.keepalived_conf].content
    assert "priority 100" in conf and "unicast_src_ip 10.99.3.2" in conf and "        10.99.3.1\n" in conf


def test_a_second_apply_changes_nothing(tmp_path, capsys):
    node = Node(tmp_path)
    node.apply(HA, capsys=capsys)
    before = kernel_writes(node.kernel)
    out = node.apply(HA, "--detailed-exitcode", capsys=capsys)
    assert "No changes" in out and kernel_writes(node.kernel) == before
    assert node.kernel.engines.actions == [("start", "conntrackd"), ("start", "keepalived")]


def test_an_edit_reloads_keepalived_only_and_moves_nothing(tmp_path, capsys):
    node = Node(tmp_path)
    node.apply(HA, capsys=capsys)
    more = HA + "  - {name: web2, vip: 10.99.1.101, port: 80, real_servers: [{address: 10.99.2.13}]}\n"
    out = node.apply(more, capsys=capsys)
    assert node.kernel.engines.actions[2:] == [("reload", "keepalived")]
    assert "~ engine keepalived keepalived.conf, notify.sh changed (reload)" in out
    assert "10.99.1.101/32 dev eth0" in node.kernel.engines.files[node.paths.keepalived_conf].content
    assert node.kernel.ipvs.observe_sync_daemons() == ha_mod.sync_daemons(pair())


def test_a_dead_engine_is_started_again(tmp_path, capsys):
    node = Node(tmp_path)
    node.apply(HA, capsys=capsys)
    node.kernel.engines.kill("keepalived")
    out = node.apply(HA, capsys=capsys)
    assert node.kernel.engines.actions[-1] == ("start", "keepalived")
    assert "+ engine keepalived" in out


def test_sync_threads_of_another_id_are_replaced(tmp_path, capsys):
    node = Node(tmp_path)
    node.kernel.ipvs.start_sync_daemon(SyncDaemon("master", "eth9", 7))
    out = node.apply(HA, capsys=capsys)
    assert "- sync master on eth9 syncid 7" in out
    assert node.kernel.ipvs.observe_sync_daemons() == ha_mod.sync_daemons(pair())


def test_turning_sync_off_stops_conntrackd_and_the_threads(tmp_path, capsys):
    node = Node(tmp_path)
    node.apply(HA, capsys=capsys)
    node.apply(HA.replace("peer_link: eth2", "peer_link: eth2\n  sync_connections: false"), capsys=capsys)
    assert ("stop", "conntrackd") in node.kernel.engines.actions
    assert "conntrackd" not in node.kernel.engines.running
    assert node.kernel.ipvs.observe_sync_daemons() == frozenset()
    assert "conntrackd" not in json.loads(node.state.read_text())["engines"]


def test_removing_ha_puts_the_vips_on_pask0_and_stops_the_engines(tmp_path, capsys):
    node = Node(tmp_path)
    node.apply(HA, capsys=capsys)
    plain = HA[:HA.index("ha:")] + HA[HA.index("services:"):]
    node.apply(plain, capsys=capsys)
    assert node.kernel.engines.running == {}
    assert node.kernel.ipvs.observe_sync_daemons() == frozenset()
    assert VipAddress("pask0", "10.99.1.100", 32) in node.kernel.addr.addrs
    state = json.loads(node.state.read_text())
    assert "engines" not in state and "sync_daemons" not in state


def test_a_missing_engine_is_named_with_its_package_and_nothing_changes(tmp_path, capsys):
    node = Node(tmp_path)
    node.kernel.engines.installed = {"keepalived"}
    out = node.apply(HA, expect=1, capsys=capsys)
    assert "ha: needs conntrackd, which is not installed: install the Debian package conntrackd" in out
    assert "ha: needs conntrack, which is not installed: install the Debian package conntrack" in out
    assert "nothing was changed" in out
    assert kernel_writes(node.kernel) == 0


def test_a_host_holding_no_node_address_changes_nothing(tmp_path, capsys):
    node = Node(tmp_path, "10.99.3.7")
    out = node.apply(HA, expect=1, capsys=capsys)
    assert f"{node.config}:5: $.ha.nodes: this host holds none of the nodes' addresses on peer_link eth2" in out
    assert kernel_writes(node.kernel) == 0
    out = node.apply(HA, "--node", "lb2", expect=1, capsys=capsys)
    assert f"{node.config}:7: $.ha.nodes[1].address: node lb2's address 10.99.3.2 is not on peer_link eth2" in out


def test_a_missing_peer_link_is_named(tmp_path, capsys):
    node = Node(tmp_path)
    out = node.apply(HA.replace("peer_link: eth2", "peer_link: eth7"), expect=1, capsys=capsys)
    assert f"{node.config}:4: $.ha.peer_link: peer_link eth7 does not exist on this host" in out


def test_an_engine_that_fails_to_start_rolls_the_apply_back(tmp_path, capsys):
    node = Node(tmp_path)
    node.kernel.engines.fail_start = {"keepalived"}
    out = node.apply(HA, expect=1, capsys=capsys)
    assert "keepalived did not stay running" in out and "rolled back" in out
    assert node.kernel.ipvs.services == {} and node.kernel.engines.running == {}
    assert node.kernel.ipvs.observe_sync_daemons() == frozenset()


def test_offline_plans_as_the_named_node(tmp_path, capsys):
    node = Node(tmp_path)
    cfg = tmp_path / "o.yaml"
    cfg.write_text(HA)
    assert apply_main(["--offline", "--node", "lb2", "--state-file", str(tmp_path / "s.json"), str(cfg)]) == 0
    assert "+ engine keepalived" in capsys.readouterr().out


# -- pask-status and the role ----------------------------------------------------------------

def test_status_shows_the_role_keepalived_reported(tmp_path, capsys):
    node = Node(tmp_path)
    node.apply(HA, capsys=capsys)
    Path(node.paths.dir).mkdir(parents=True, exist_ok=True)
    Path(node.paths.role).write_text("MASTER 1700000000\n")
    assert status_main(["--format", "json", "--state-file", str(node.state), "--health-file",
                        str(tmp_path / "h.json")], backends=lambda: node.kernel) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ha"] == {"role": "MASTER", "since": 1700000000.0, "keepalived": "running"}
    node.kernel.engines.kill("keepalived")
    status_main(["--state-file", str(node.state), "--health-file", str(tmp_path / "h.json")],
                backends=lambda: node.kernel)
    assert capsys.readouterr().out.startswith("HA role: STOPPED (keepalived not running)")


def test_status_without_ha_says_nothing_of_it(tmp_path, capsys, kernel):
    assert status_main(["--format", "json", "--state-file", str(tmp_path / "s.json"), "--health-file",
                        str(tmp_path / "h.json")], backends=lambda: kernel) == 0
    assert "ha" not in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("text, role", [("BACKUP 12\n", ("BACKUP", 12.0)), ("", None), ("BOSS 1\n", None),
                                        ("MASTER x\n", None)])
def test_the_role_file_is_read_defensively(tmp_path, text, role):
    paths = EnginePaths(str(tmp_path))
    Path(paths.role).write_text(text)
    assert ha_mod.read_role(paths) == role


# -- the both-NAT guard ------------------------------------------------------------------------

def _guard(config) -> list[dict]:
    from pask_ipvs.desired import expand
    from pask_ipvs.fwmarks import fwmarks_for

    table = expand(config, fwmarks_for(config, {})).nft
    cmds = table.command_list() if table else []
    return [c["add"] for c in cmds if "ha_guard" in json.dumps(c) or "ha_snat" in json.dumps(c)]


def test_with_ha_tcp_to_the_snat_address_without_conntrack_state_is_dropped_not_reset(load_text):
    guard = _guard(load_text(HA))
    chain, snat_set, rule = guard
    assert chain["chain"]["hook"] == "input" and chain["chain"]["prio"] == 0
    assert snat_set["set"]["name"] == "ha_snat4" and snat_set["set"]["elem"] == ["10.99.2.1"]
    exprs = rule["rule"]["expr"]
    assert {"match": {"op": "!", "left": {"payload": {"protocol": "tcp", "field": "flags"}},
                      "right": ["syn", "rst"]}} in exprs
    assert {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}} in exprs
    assert exprs[-1] == {"drop": None}


def test_no_guard_without_ha_or_for_a_snat_ip_that_is_a_vip(load_text):
    plain = HA[:HA.index("ha:")] + HA[HA.index("services:"):]
    assert _guard(load_text(plain)) == []
    assert _guard(load_text(HA.replace("snat_ip: 10.99.2.1", "snat_ip: 10.99.1.100"))) == []
