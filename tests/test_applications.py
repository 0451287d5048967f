"""services[].application: validation, the model, the modules and helpers it plans, and
how they reach a kernel that behaves like the real one (fakes)."""

from __future__ import annotations

import errno

import pytest

from pask_ipvs.apply import execute, preflight
from pask_ipvs.backend.fake import fake_backends, kernel_writes
from pask_ipvs.backend.fake_host import FakeModules
from pask_ipvs.desired import expand
from pask_ipvs.fwmarks import fwmarks_for
from pask_ipvs.model import Application, FilterAction, PortRange
from pask_ipvs.objects import KernelModule
from pask_ipvs.observe import observe
from pask_ipvs.pipeline import reconcile
from pask_ipvs.plan import ADD, SET, diff
from pask_ipvs.render.text import plan_text
from pask_ipvs.state import PaskState


def service_yaml(**keys: object) -> str:
    body = {"name": "app", "vip": "10.99.100.1", "port": 21, **keys}
    lines = [f"    {k}: {v}" for k, v in body.items()]
    lines[0] = "  - " + lines[0].lstrip()
    return "version: 1\nservices:\n" + "\n".join(lines) + \
        "\n    real_servers: [{address: 10.99.2.11}, {address: 10.99.2.12}]\n"


def messages(problems) -> list[tuple[int, str, str]]:
    return [(p.line, p.path, p.message) for p in problems]


# -- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("app, proto, allowed", [
    ("ftp", "udp", "tcp"), ("ftp", "sctp", "tcp"), ("tftp", "tcp", "udp"), ("h323", "sctp", "tcp or udp"),
])
def test_application_on_the_wrong_protocol(problems_of, app, proto, allowed):
    port = {"ftp": 21, "tftp": 69, "h323": 1720}[app]
    mode = {"nat_mode": "both-nat", "snat_ip": "10.99.2.1"} if app == "h323" else {}
    (line, path, msg), = messages(problems_of(service_yaml(port=port, protocol=proto, application=app,
                                                           **mode)))
    assert (line, path) == (7, "$.services[0].application")
    assert msg == (f"application {app} runs on {allowed}, not {proto} "
                   f"(allowed: protocol {allowed}, or application none)")


@pytest.mark.parametrize("app, proto, allowed", [("tftp", "udp", "dest-nat, both-nat, lan-to-lan"),
                                                  ("h323", "tcp", "both-nat"), ("h323", "udp", "both-nat")])
@pytest.mark.parametrize("mode", ["l2-dsr", "l3-dsr"])
def test_helper_applications_cannot_work_in_dsr(problems_of, app, proto, allowed, mode):
    (line, path, msg), = messages(problems_of(service_yaml(
        port=69, protocol=proto, nat_mode=mode, application=app)))
    assert (line, path) == (8, "$.services[0].application")
    assert msg.startswith(f"application {app} cannot work in nat_mode {mode}: ")
    assert "in DSR modes the answer" in msg and msg.endswith(f"(allowed: {allowed})")


@pytest.mark.parametrize("mode", ["dest-nat", "lan-to-lan"])
def test_h323_only_in_both_nat(problems_of, mode):
    extra = {"local_networks": "[10.99.2.0/24]"} if mode == "lan-to-lan" else {}
    (_, path, msg), = messages(problems_of(service_yaml(
        port=1720, nat_mode=mode, application="h323", **extra)))
    assert path == "$.services[0].application"
    assert msg.startswith(f"application h323 cannot work in nat_mode {mode}: ")
    assert msg.endswith("(allowed: both-nat)")


@pytest.mark.parametrize("app, proto", [("ftp", "tcp"), ("tftp", "udp")])
def test_ftp_and_tftp_in_lan_to_lan_are_fine(load_text, app, proto):
    svc = load_text(service_yaml(port=69, protocol=proto, nat_mode="lan-to-lan",
                                 local_networks="[10.99.2.0/24]", application=app)).services[0]
    assert svc.conntrack_helper


@pytest.mark.parametrize("mode", ["dest-nat", "l2-dsr"])
def test_application_needs_a_service_port(problems_of, mode):
    problems = messages(problems_of(service_yaml(
        port=0, nat_mode=mode, application="ftp", persistence="{timeout: 60}")))
    assert problems == [(7, "$.services[0].application",
                         "application ftp needs its service port: the kernel's helper follows the "
                         "port the client connected to (allowed: port 1..65535)")]


def test_ftp_in_dsr_takes_the_port_below_the_control_port(problems_of):
    (_, _, msg), = messages(problems_of(service_yaml(port=1, nat_mode="l2-dsr", application="ftp")))
    assert "the control port must be 2..65535" in msg


@pytest.mark.parametrize("keys", [
    {"application": "ftp"},                                  # NAT mode: ip_vs_ftp follows PASV
    {"nat_mode": "l2-dsr"},                                  # not ftp
    {"nat_mode": "l2-dsr", "application": "none"},
])
def test_passive_ports_only_for_ftp_in_dsr(problems_of, keys):
    (line, path, msg), = messages(problems_of(service_yaml(**keys, passive_ports="30000-30100")))
    assert path == "$.services[0].passive_ports"
    assert msg.startswith("passive_ports is only used by application ftp in l2-dsr or l3-dsr")


def test_passive_ports_range_checked_with_every_other_problem(problems_of):
    problems = messages(problems_of(service_yaml(
        protocol="udp", application="ftp", nat_mode="l2-dsr", passive_ports="40000-30000")))
    assert [p for _, p, _ in problems] == ["$.services[0].application", "$.services[0].passive_ports"]
    assert "reversed: 40000 > 30000" in problems[1][2]


def test_unknown_application_lists_the_allowed(problems_of):
    (_, path, msg), = messages(problems_of(service_yaml(application="sip")))
    assert (path, msg) == ("$.services[0].application",
                           "unknown value 'sip' (allowed: none, ftp, tftp, h323)")


def test_explicit_fwmark_is_fine_on_ftp_in_dsr(load_text):
    cfg = load_text(service_yaml(nat_mode="l2-dsr", application="ftp", fwmark=77))
    assert cfg.services[0].fwmark == 77 and cfg.services[0].uses_fwmark


# -- the model -------------------------------------------------------------------------------

def test_default_application_is_none(load_text):
    assert load_text(service_yaml()).services[0].application is Application.NONE


def test_ftp_in_dsr_becomes_a_persistent_fwmark_service(load_text):
    svc = load_text(service_yaml(nat_mode="l3-dsr", application="ftp", passive_ports="30000-30009")) \
        .services[0]
    assert svc.uses_fwmark
    assert svc.persistence is not None and svc.persistence.timeout == 300
    assert [(f.action, f.dst, f.dst_port) for f in svc.filters] == [
        (FilterAction.INCLUDE, "10.99.100.1/32", PortRange(21, 21)),
        (FilterAction.INCLUDE, "10.99.100.1/32", PortRange(20, 20)),
        (FilterAction.INCLUDE, "10.99.100.1/32", PortRange(30000, 30009)),
    ]


def test_ftp_in_dsr_on_another_port_takes_both_active_data_ports(load_text):
    svc = load_text(service_yaml(port=2121, nat_mode="l2-dsr", application="ftp")).services[0]
    assert [f.dst_port for f in svc.filters] == [
        PortRange(2121, 2121), PortRange(20, 20), PortRange(2120, 2120), PortRange(1024, 65535)]


def test_ftp_in_dsr_keeps_the_configs_filters_and_persistence(load_text):
    svc = load_text(service_yaml(
        nat_mode="l2-dsr", application="ftp", persistence="{timeout: 900, netmask: 255.255.255.0}",
        filters="[{action: exclude, src: 10.99.9.0/24}, {action: include, dst: 10.99.100.1/32, "
                "protocol: tcp, dst_port: 2121}]")).services[0]
    assert svc.persistence.timeout == 900 and svc.persistence.netmask == "255.255.255.0"
    assert svc.filters[0].action is FilterAction.EXCLUDE          # excludes still come first
    assert svc.filters[1].dst_port == PortRange(2121, 2121)
    assert svc.filters[-1].dst_port == PortRange(1024, 65535)      # the default passive range


def test_ftp_in_nat_modes_is_a_plain_vip_service(load_text):
    svc = load_text(service_yaml(application="ftp")).services[0]
    assert not svc.uses_fwmark and svc.persistence is None and not svc.filters


# -- desired: modules, sysctls, helpers --------------------------------------------------------

def desired_of(load_text, text: str):
    cfg = load_text(text)
    return cfg, expand(cfg, fwmarks_for(cfg, {}))


TWO_FTP = """
version: 1
services:
  - {name: ftp, vip: 10.99.100.1, port: 21, application: ftp, real_servers: [{address: 10.99.2.11}]}
  - {name: ftp2, vip: 10.99.100.1, port: 2121, application: ftp, nat_mode: both-nat,
     snat_ip: 10.99.2.1, real_servers: [{address: 10.99.2.11}]}
  - {name: dr, vip: 10.99.100.2, port: 990, application: ftp, nat_mode: l2-dsr,
     real_servers: [{address: 10.99.2.11}]}
"""


def test_ip_vs_ftp_carries_the_nat_services_ports(load_text):
    _, desired = desired_of(load_text, TWO_FTP)
    assert desired.module_users == {"ip_vs_ftp": ("ftp", "ftp2"), "nf_conntrack_ftp": ("ftp2",),
                                    "nf_nat_ftp": ("ftp2",)}
    # both-nat ftp adds conntrack's ftp helper and its NAT half (the client's PORT is rewritten
    # to snat_ip, the passive data is source-NATed); DSR ftp needs no helper: the fwmark and
    # persistence carry its data connections
    assert desired.modules == {
        "ip_vs_ftp": KernelModule("ip_vs_ftp", (("ports", "21,2121"),)),
        "nf_conntrack_ftp": KernelModule("nf_conntrack_ftp"),
        "nf_nat_ftp": KernelModule("nf_nat_ftp"),
    }


def test_only_ftp_that_translates_the_client_gets_a_conntrack_helper(load_text):
    cfg, desired = desired_of(load_text, TWO_FTP)
    assert [s.name for s in cfg.services if s.conntrack_helper] == ["ftp2"]
    helpers = [c["add"]["ct helper"] for c in desired.nft.command_list() if "ct helper" in c["add"]]
    assert [(h["name"], h["type"]) for h in helpers] == [("ftp", "ftp")]
    marks = fwmarks_for(cfg, {})
    assert set(marks) == {"ftp2", "dr"}          # dr: its fwmark; ftp2: the ct mark of its data


def expected_snat(desired) -> dict[int, str]:
    """The expected-flow SNAT map of the table: ct mark -> address."""
    maps = [c["add"]["map"] for c in desired.nft.command_list()
            if "map" in c["add"] and c["add"]["map"]["name"] in ("expected4", "expected6")]
    return {mark: addr for m in maps for mark, addr in m["elem"]}


def test_expected_flows_are_source_nated_to_what_the_other_side_talks_to(load_text):
    cfg, desired = desired_of(load_text, """
        version: 1
        services:
          - {name: tftp, vip: 10.99.100.1, port: 69, protocol: udp, application: tftp}
          - {name: tftp-b, vip: 10.99.100.2, port: 69, protocol: udp, application: tftp,
             nat_mode: both-nat, snat_ip: 10.99.2.1}
          - {name: ftp-b, vip: 10.99.100.3, port: 21, application: ftp, nat_mode: both-nat,
             snat_ip: 10.99.2.2}
          - {name: tftp6, vip: "fd00:99:100::1", port: 69, protocol: udp, application: tftp}
          - {name: ftp-l, vip: 10.99.100.4, port: 21, application: ftp, nat_mode: lan-to-lan,
             local_networks: [10.99.2.0/24, 10.99.5.0/24]}
        """)
    marks = fwmarks_for(cfg, {})
    # dest-nat: TFTP's answer from a new port leaves with the VIP; both-nat: the server sees
    # snat_ip on the data flows too
    assert expected_snat(desired) == {marks["tftp"]: "10.99.100.1", marks["tftp-b"]: "10.99.2.1",
                                      marks["ftp-b"]: "10.99.2.2", marks["tftp6"]: "fd00:99:100::1"}
    post = [c["add"]["rule"]["expr"] for c in desired.nft.command_list()
            if "rule" in c["add"] and c["add"]["rule"]["chain"] == "postrouting"]
    assert {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "expected"}} in post[0]
    # lan-to-lan FTP: only LAN clients' data shows the VIP (others keep their address, as on
    # their control connection)
    l2l, = [c["add"]["map"] for c in desired.nft.command_list()
            if "map" in c["add"] and c["add"]["map"]["name"] == "expected_l2l4"]
    assert l2l["flags"] == ["interval"] and l2l["elem"] == [
        [{"concat": [{"prefix": {"addr": net, "len": 24}}, marks["ftp-l"]]}, "10.99.100.4"]
        for net in ("10.99.2.0", "10.99.5.0")]


def test_tftp_and_h323_load_conntrack_helpers_and_keep_ipvs_conntrack(load_text):
    _, desired = desired_of(load_text, """
        version: 1
        services:
          - {name: tftp, vip: 10.99.100.1, port: 69, protocol: udp, application: tftp}
          - {name: q931, vip: 10.99.100.1, port: 1720, application: h323, nat_mode: both-nat,
             snat_ip: 10.99.2.1}
          - {name: ras, vip: 10.99.100.1, port: 1719, protocol: udp, application: h323,
             nat_mode: both-nat, snat_ip: 10.99.2.1}
        """)
    assert list(desired.modules) == ["nf_conntrack_tftp", "nf_nat_tftp", "nf_conntrack_h323",
                                     "nf_nat_h323"]
    assert desired.sysctls["net.ipv4.vs.conntrack"] == "1"


def test_helpers_are_assigned_by_rule_to_the_services_traffic(load_text):
    cfg, desired = desired_of(load_text, """
        version: 1
        services:
          - {name: tftp, vip: 10.99.100.1, port: 69, protocol: udp, application: tftp}
          - {name: q931, vip: 10.99.100.1, port: 1720, application: h323, nat_mode: both-nat,
             snat_ip: 10.99.2.1, filters: [{action: include, dst: 10.99.100.1/32, dst_port: 1720}]}
          - {name: web, vip: 10.99.100.1, port: 80}
        """)
    marks = fwmarks_for(cfg, {})
    assert set(marks) == {"tftp", "q931"} and marks["tftp"] != marks["q931"]
    cmds = desired.nft.command_list()
    helpers = [c["add"]["ct helper"] for c in cmds if "ct helper" in c["add"]]
    assert [(h["name"], h["type"], h["protocol"], h["l3proto"]) for h in helpers] == [
        ("tftp", "tftp", "udp", "inet"), ("q931", "Q.931", "tcp", "inet")]
    rules = [c["add"]["rule"]["expr"] for c in cmds
             if "rule" in c["add"] and c["add"]["rule"]["chain"] == "helpers"]
    assert len(rules) == 2                                 # web gets no helper
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                      "right": "10.99.100.1"}} in rules[0]
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}},
                      "right": 69}} in rules[0]
    # a VIP service's flow gets the ct mark its expected flows will inherit
    assert rules[0][-2:] == [{"ct helper": "tftp"},
                             {"mangle": {"key": {"ct": {"key": "mark"}}, "value": marks["tftp"]}}]
    # an fwmark service's traffic carries its mark (and ct mark) already
    assert rules[1] == [{"match": {"op": "==", "left": {"meta": {"key": "mark"}},
                                   "right": marks["q931"]}},
                        {"ct helper": "q931"}]
    chain = next(c["add"]["chain"] for c in cmds
                 if "chain" in c["add"] and c["add"]["chain"]["name"] == "helpers")
    assert (chain["hook"], chain["prio"]) == ("prerouting", -140)   # after the marks (-150)


def test_no_application_no_helper_no_module(load_text):
    _, desired = desired_of(load_text, service_yaml(port=80))
    assert desired.modules == {} and desired.nft is None


# -- modules: plan and apply on a kernel that behaves like the real one -------------------------

def apply_config(cfg, b, state=None):
    state = state or PaskState()
    marks = fwmarks_for(cfg, state.fwmarks)
    desired = expand(cfg, marks)
    out = reconcile(desired, observe(desired, b), state, marks, b)
    return out


def test_modules_are_loaded_before_the_services_and_a_rerun_writes_nothing(load_text):
    cfg = load_text(TWO_FTP)
    b = fake_backends()
    out = apply_config(cfg, b)
    assert out.result.ok and not out.remaining.changed
    kinds = [op.kind for op in out.plan.ops]
    assert kinds.index("module") < kinds.index("service")
    assert b.modules.loaded["ip_vs_ftp"].param("ports") == "21,2121"
    writes = kernel_writes(b)
    again = apply_config(cfg, b, out.state)
    assert again.plan.ops == () and kernel_writes(b) == writes


def test_a_loaded_module_with_more_ports_is_left_alone(load_text):
    b = fake_backends()
    b.modules = FakeModules(loaded=[KernelModule("ip_vs_ftp", (("ports", "21,2121,8021"),))])
    cfg = load_text(TWO_FTP)
    desired = expand(cfg, fwmarks_for(cfg, {}))
    assert [op.label for op in diff(desired, observe(desired, b)).ops if op.kind == "module"] == [
        "nf_conntrack_ftp", "nf_nat_ftp"]


def test_a_module_loaded_without_a_needed_port_is_reloaded_with_both(load_text):
    b = fake_backends()
    b.modules = FakeModules(loaded=[KernelModule("ip_vs_ftp", (("ports", "21,8021"),))])
    cfg = load_text(TWO_FTP)
    desired = expand(cfg, fwmarks_for(cfg, {}))
    op, = [op for op in diff(desired, observe(desired, b)).ops if op.label == "ip_vs_ftp"]
    assert (op.action, op.reason, op.after.param("ports")) == (SET, "reload", "21,2121,8021")
    assert "~ module ip_vs_ftp ports=21,8021 -> ports=21,2121,8021  (reload)" in plan_text([op])
    result = execute([op], b)
    assert result.ok and b.modules.loaded["ip_vs_ftp"].param("ports") == "21,2121,8021"


def test_a_module_in_use_is_not_reloaded_and_nothing_stays_half_applied(load_text):
    b = fake_backends()
    b.modules = FakeModules(loaded=[KernelModule("ip_vs_ftp", (("ports", "21"),))])
    b.modules.in_use.add("ip_vs_ftp")
    cfg = load_text(TWO_FTP)
    out = apply_config(cfg, b)
    assert not out.result.ok
    err, = out.result.errors
    assert err.errno == errno.EBUSY
    assert "in use" in str(err) and "then apply again" in str(err)
    assert b.ipvs.observe().services == {}                   # the module op runs first: nothing else ran
    assert b.modules.loaded["ip_vs_ftp"].param("ports") == "21"


def test_preflight_names_a_missing_helper_module(load_text):
    b = fake_backends()
    b.modules = FakeModules(available={"nf_conntrack_tftp"})
    cfg = load_text("""
        version: 1
        services:
          - {name: tftp, vip: 10.99.100.1, port: 69, protocol: udp, application: tftp}
        """)
    desired = expand(cfg, fwmarks_for(cfg, {}))
    assert preflight(desired, b) == [
        "kernel module nf_nat_tftp (services: tftp) is needed, and this kernel does not have it"]


def test_modules_are_never_unloaded_when_the_service_goes(load_text):
    b = fake_backends()
    out = apply_config(load_text(TWO_FTP), b)
    after = apply_config(load_text(service_yaml(port=80)), b, out.state)
    assert after.result.ok and "ip_vs_ftp" in b.modules.loaded
    assert not [op for op in after.plan.ops if op.kind == "module"]


def test_modules_load_with_their_parameters():
    m = FakeModules()
    m.load(KernelModule("ip_vs_ftp"))
    assert m.loaded["ip_vs_ftp"].param("ports") == "21"              # the module's default
    m.load(KernelModule("ip_vs_ftp", (("ports", "2121"),)))          # loaded: modprobe does nothing
    assert m.loaded["ip_vs_ftp"].param("ports") == "21"
    with pytest.raises(Exception) as info:
        FakeModules(available=()).load(KernelModule("nf_nat_tftp"))
    assert info.value.errno == errno.ENOENT


@pytest.mark.parametrize("have, want, covers, merged", [
    ("21", "21", True, "21"),
    ("21,2121", "2121", True, "21,2121"),
    ("21", "2121", False, "21,2121"),
    ("2121,21", "21,990", False, "21,990,2121"),
])
def test_kernel_module_covers_and_merges_comma_lists(have, want, covers, merged):
    loaded = KernelModule("ip_vs_ftp", (("ports", have),))
    need = KernelModule("ip_vs_ftp", (("ports", want),))
    assert loaded.covers(need) is covers
    assert loaded.merged(need).param("ports") == merged


def test_module_ops_in_the_plan_text_and_json(load_text):
    cfg = load_text(TWO_FTP)
    desired = expand(cfg, fwmarks_for(cfg, {}))
    op = next(op for op in diff(desired, observe(desired, fake_backends())).ops if op.kind == "module")
    assert op.action == ADD
    assert plan_text([op]).splitlines()[0] == "+ module ip_vs_ftp ports=21,2121"
