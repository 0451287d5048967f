"""`pask realserver`: plans, idempotence, dry run, undo and errors on a fake host (the real
backend, in a network namespace: integration/host/test_realserver_netns.py)."""

from __future__ import annotations

import io
import json

import pytest

from pask_ipvs.backend.realserver_host import FakeRealServerHost
from pask_ipvs.objects import VipAddress
from pask_ipvs.realserver import (
    DOWN_NOTE, RealServerError, parse_vips, plan_down, plan_up, required_sysctls, warnings_for,
)
from pask_ipvs.cli.realserver import run
from pask_ipvs.objects import HostObserved

VIP, VIP2 = "10.99.100.1", "10.99.100.2"
VIP6, VIP6_2 = "fd00:99:100::1", "fd00:99:100::2"


def call(host: FakeRealServerHost, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), lambda: host, out, err)
    return code, out.getvalue(), err.getvalue()


def call_json(host: FakeRealServerHost, *argv: str) -> tuple[int, dict]:
    code, out, _ = call(host, *argv, "--format", "json")
    return code, json.loads(out)


# -- pure planning ----------------------------------------------------------------

def test_l2_plan_on_a_fresh_namespace_orders_sysctls_before_the_vip():
    host = FakeRealServerHost()
    plan = plan_up("l2-dsr", [VIP], host.observe(required_sysctls("l2-dsr")))
    assert [(op.action, op.kind, op.label, op.after) for op in plan.ops] == [
        ("set", "link", "lo", "up"),
        ("set", "sysctl", "net.ipv4.conf.all.arp_ignore", "1"),
        ("set", "sysctl", "net.ipv4.conf.all.arp_announce", "2"),
        ("set", "sysctl", "net.ipv4.conf.lo.arp_ignore", "1"),
        ("set", "sysctl", "net.ipv4.conf.lo.arp_announce", "2"),
        ("add", "address", "10.99.100.1/32 dev lo", VipAddress("lo", VIP, 32)),
    ]


def test_l3_plan_loads_ipip_first_and_puts_the_vip_on_tunl0():
    host = FakeRealServerHost()
    plan = plan_up("l3-dsr", [VIP], host.observe(required_sysctls("l3-dsr")))
    kinds = [(op.kind, op.label) for op in plan.ops]
    assert kinds[0] == ("module", "ipip")
    assert ("link", "tunl0") in kinds and ("link", "lo") not in kinds
    assert ("sysctl", "net.ipv4.conf.tunl0.rp_filter") in kinds
    assert ("sysctl", "net.ipv4.conf.all.rp_filter") in kinds
    assert kinds[-1] == ("address", "10.99.100.1/32 dev tunl0")
    tunl0_up = [op for op in plan.ops if op.kind == "link"][0]
    assert tunl0_up.before is None  # tunl0 does not exist until ipip is loaded


def test_l3_plan_skips_modprobe_when_tunl0_exists():
    host = FakeRealServerHost(ipip_loaded=True)
    plan = plan_up("l3-dsr", [VIP], host.observe(required_sysctls("l3-dsr")))
    assert "module" not in [op.kind for op in plan.ops]
    assert [op for op in plan.ops if op.kind == "link"][0].before == "down"


def test_plan_is_empty_when_the_host_is_ready():
    ready = HostObserved({"lo": True}, frozenset({VipAddress("lo", VIP, 32)}),
                         required_sysctls("l2-dsr"))
    assert not plan_up("l2-dsr", [VIP], ready).changed


def test_down_removes_only_the_vips_and_by_default_from_lo_and_tunl0():
    have = frozenset({VipAddress("lo", VIP, 32), VipAddress("tunl0", VIP, 32),
                      VipAddress("lo", "127.0.0.1", 8), VipAddress("tunl0", VIP2, 32)})
    observed = HostObserved({"lo": True, "tunl0": True}, have, {})
    assert [op.label for op in plan_down([VIP], observed).ops] == [
        "10.99.100.1/32 dev lo", "10.99.100.1/32 dev tunl0"]
    assert [op.label for op in plan_down([VIP], observed, "l3-dsr").ops] == ["10.99.100.1/32 dev tunl0"]
    assert all(op.action == "delete" and op.kind == "address" for op in plan_down([VIP], observed).ops)


def test_parse_vips_canonicalises_dedupes_and_rejects_bad_input():
    assert parse_vips(["10.99.100.1", "10.99.100.1/32", "10.99.100.2"]) == (VIP, VIP2)
    assert parse_vips(["FD00:99:100:0::1", "fd00:99:100::1/128", VIP]) == (VIP6, VIP)
    with pytest.raises(RealServerError) as e:
        parse_vips(["10.99.100.300", "fd00::/64", "10.99.100.0/24", "fe80::1", "ff02::1", "::"])
    lines = str(e.value).splitlines()
    assert len(lines) == 6 and "10.99.100.300" in lines[0]
    assert "fd00::/64" in lines[1] and "/128" in lines[1] and "/32" in lines[2]
    assert all("unicast" in line for line in lines[3:])


def test_a_vip_on_another_link_is_a_warning():
    observed = HostObserved({"lo": True, "eth0": True}, frozenset({VipAddress("eth0", VIP, 24)}), {})
    (w,) = warnings_for("l2-dsr", [VIP], observed)
    assert "eth0" in w and "ARP" in w
    assert warnings_for("l2-dsr", [VIP2], observed) == []


# -- the command on a fake host -------------------------------------------------------

def test_up_l2_applies_then_second_run_changes_nothing():
    host = FakeRealServerHost()
    code, out, err = call(host, "up", "--vip", VIP, "--mode", "l2-dsr", "--detailed-exitcode")
    assert code == 2, err
    assert "+ address 10.99.100.1/32 dev lo" in out
    assert "~ sysctl net.ipv4.conf.all.arp_ignore = 1 (was 0)" in out
    assert "~ link lo down -> up" in out
    assert "Applied and verified" in out
    assert VipAddress("lo", VIP, 32) in host.addresses and host.links["lo"]
    assert all(host.sysctls[k] == v for k, v in required_sysctls("l2-dsr").items())

    before = list(host.changes)
    code, out, err = call(host, "up", "--vip", VIP, "--mode", "l2-dsr", "--detailed-exitcode")
    assert code == 0 and host.changes == before
    assert out.startswith("No changes: this real server is ready for l2-dsr")


def test_up_without_detailed_exitcode_exits_0_on_changes():
    host = FakeRealServerHost()
    assert call(host, "up", "--vip", VIP, "--mode", "l2-dsr")[0] == 0
    assert VipAddress("lo", VIP, 32) in host.addresses


def test_up_l3_loads_ipip_and_configures_tunl0():
    host = FakeRealServerHost()
    code, report = call_json(host, "up", "--vip", VIP, "--vip", VIP2, "--mode", "l3-dsr",
                             "--detailed-exitcode")
    assert code == 2, report["errors"]
    assert host.changes[0] == "modprobe ipip"
    assert host.links["tunl0"] is True
    assert host.sysctls["net.ipv4.conf.tunl0.rp_filter"] == "0"
    assert host.sysctls["net.ipv4.conf.all.rp_filter"] == "0"
    assert {VipAddress("tunl0", VIP, 32), VipAddress("tunl0", VIP2, 32)} <= host.addresses
    assert report["changed"] is True and report["verified"] is True and report["drift"] == []
    assert report["counts"]["add"] == 3 and report["vips"] == [VIP, VIP2]
    assert report["ops"][0] == {"action": "add", "kind": "module", "key": "ipip", "service": None,
                                "before": None, "after": "ipip", "reason": "creates tunl0"}
    address_op = report["ops"][-1]
    assert address_op["after"] == {"interface": "tunl0", "addr": VIP2, "prefixlen": 32}
    assert report["plan_text"].endswith("Plan: 3 to add, 5 to change, 0 to delete.\n")

    code, report = call_json(host, "up", "--vip", VIP, "--vip", VIP2, "--mode", "l3-dsr",
                             "--detailed-exitcode")
    assert code == 0 and report["changed"] is False and report["ops"] == []


def test_dry_run_prints_the_plan_and_changes_nothing():
    host = FakeRealServerHost(root=False)   # a dry run needs no root
    code, out, err = call(host, "up", "--vip", VIP, "--mode", "l3-dsr", "--dry-run",
                          "--detailed-exitcode")
    assert code == 2, err
    assert "+ module ipip  (creates tunl0)" in out
    assert "~ link tunl0 absent -> up" in out
    assert "+ address 10.99.100.1/32 dev tunl0" in out
    assert "Dry run: nothing was changed." in out
    assert host.changes == [] and "tunl0" not in host.links
    code, report = call_json(host, "up", "--vip", VIP, "--mode", "l3-dsr", "--dry-run")
    assert code == 0 and report["dry_run"] is True and report["verified"] is None
    assert host.changes == []


def test_down_undoes_up_and_leaves_sysctls():
    host = FakeRealServerHost()
    call(host, "up", "--vip", VIP, "--mode", "l2-dsr")
    sysctls = dict(host.sysctls)
    code, out, _ = call(host, "down", "--vip", VIP, "--detailed-exitcode")
    assert code == 2
    assert "- address 10.99.100.1/32 dev lo" in out and DOWN_NOTE in out
    assert VipAddress("lo", VIP, 32) not in host.addresses
    assert host.sysctls == sysctls and host.links["lo"] is True
    code, out, _ = call(host, "down", "--vip", VIP, "--detailed-exitcode")
    assert code == 0 and out.startswith("No changes: 10.99.100.1 no longer on lo or tunl0.")


def test_down_with_mode_leaves_the_other_interface():
    host = FakeRealServerHost()
    call(host, "up", "--vip", VIP, "--mode", "l2-dsr")
    call(host, "up", "--vip", VIP, "--mode", "l3-dsr")
    code, report = call_json(host, "down", "--vip", VIP, "--mode", "l3-dsr")
    assert code == 0 and [op["key"] for op in report["ops"]] == ["10.99.100.1/32 dev tunl0"]
    assert report["notes"] == [DOWN_NOTE]
    assert VipAddress("lo", VIP, 32) in host.addresses


def test_not_root_is_a_clear_error_and_changes_nothing():
    host = FakeRealServerHost(root=False)
    code, out, err = call(host, "up", "--vip", VIP, "--mode", "l2-dsr")
    assert code == 1
    assert "must run as root" in err and "--dry-run" in err
    assert host.changes == []


def test_not_root_with_nothing_to_do_is_fine():
    host = FakeRealServerHost(root=False)
    code, _, err = call(host, "down", "--vip", VIP, "--detailed-exitcode")
    assert code == 0, err


def test_missing_ipip_module_is_a_clear_error():
    host = FakeRealServerHost(ipip_available=False)
    code, report = call_json(host, "up", "--vip", VIP, "--mode", "l3-dsr")
    assert code == 1
    (msg,) = report["errors"]
    assert "modprobe ipip" in msg and "Module ipip not found" in msg and "l3-dsr needs" in msg
    assert msg.endswith("nothing was changed")
    assert VipAddress("tunl0", VIP, 32) not in host.addresses


def test_ipip_loaded_but_no_tunl0_in_this_netns_names_the_sysctl():
    host = FakeRealServerHost(tunnel_in_netns=False)
    code, _, err = call(host, "up", "--vip", VIP, "--mode", "l3-dsr")
    assert code == 1
    assert "tunl0 does not exist" in err and "fb_tunnels_only_for_init_net" in err
    assert "the 1 op(s) before it were applied" in err      # modprobe ipip


class _StuckSysctlHost(FakeRealServerHost):
    """A kernel that accepts the write but keeps the old value (e.g. a sysctl reverted by another agent)."""

    def write_sysctl(self, key: str, value: str) -> None:
        if key == "net.ipv4.conf.all.arp_ignore":
            return
        super().write_sysctl(key, value)


def test_verify_reports_drift_after_apply():
    code, report = call_json(_StuckSysctlHost(), "up", "--vip", VIP, "--mode", "l2-dsr")
    assert code == 1 and report["verified"] is False
    assert [op["key"] for op in report["drift"]] == ["net.ipv4.conf.all.arp_ignore"]
    assert "verify" in report["errors"][0]


@pytest.mark.parametrize("argv", [
    ["up", "--vip", VIP],                                  # --mode is required for up
    ["up", "--vip", VIP, "--mode", "l4-dsr"],
    ["sideways", "--vip", VIP],
    ["up", "--mode", "l2-dsr"],                            # --vip is required
])
def test_usage_errors_exit_1_not_2(argv, capsys):
    code, _, _ = call(FakeRealServerHost(), *argv)
    assert code == 1
    assert "usage:" in capsys.readouterr().err


def test_bad_vip_is_exit_1_and_nothing_changes():
    host = FakeRealServerHost()
    code, _, err = call(host, "up", "--vip", "fd00::/64", "--mode", "l2-dsr")
    assert code == 1 and "not a network" in err and host.changes == []


def test_a_vip_on_eth0_is_warned_about_on_stderr():
    host = FakeRealServerHost()
    host.links["eth0"] = True
    host.addresses.add(VipAddress("eth0", VIP, 24))
    code, report = call_json(host, "up", "--vip", VIP, "--mode", "l2-dsr")
    assert code == 0 and "eth0" in report["warnings"][0]


def test_pask_umbrella_dispatches_realserver(monkeypatch, capsys):
    from pask_ipvs import cli
    from pask_ipvs.cli import realserver

    host = FakeRealServerHost()
    monkeypatch.setattr(realserver, "_linux_host", lambda: host)
    assert cli.main(["realserver", "up", "--vip", VIP, "--mode", "l2-dsr",
                     "--detailed-exitcode"]) == 2
    assert VipAddress("lo", VIP, 32) in host.addresses
    assert "Applied and verified" in capsys.readouterr().out


# -- IPv6 VIPs (verified with real IPv6 traffic: integration/test_ipv6.py) ----------

def test_ipv6_l2_plan_is_the_vip_on_lo_as_128_and_no_arp_sysctls():
    host = FakeRealServerHost()
    assert required_sysctls("l2-dsr", [VIP6]) == {}
    plan = plan_up("l2-dsr", [VIP6], host.observe(required_sysctls("l2-dsr", [VIP6])))
    assert [(op.action, op.kind, op.label, op.after) for op in plan.ops] == [
        ("set", "link", "lo", "up"),
        ("add", "address", "fd00:99:100::1/128 dev lo", VipAddress("lo", VIP6, 128)),
    ]


def test_ipv6_l3_plan_loads_ip6_tunnel_and_puts_the_vip_on_ip6tnl0():
    host = FakeRealServerHost()
    plan = plan_up("l3-dsr", [VIP6], host.observe(required_sysctls("l3-dsr", [VIP6])))
    assert [(op.action, op.kind, op.label) for op in plan.ops] == [
        ("add", "module", "ip6_tunnel"), ("set", "link", "ip6tnl0"),
        ("add", "address", "fd00:99:100::1/128 dev ip6tnl0")]
    assert plan.ops[0].reason == "creates ip6tnl0" and plan.ops[1].before is None


def test_mixed_families_in_l3_need_both_tunnels_and_the_ipv4_sysctls():
    host = FakeRealServerHost(ipip_loaded=True)
    plan = plan_up("l3-dsr", [VIP, VIP6], host.observe(required_sysctls("l3-dsr", [VIP, VIP6])))
    kinds = [(op.kind, op.label) for op in plan.ops]
    assert kinds[0] == ("module", "ip6_tunnel") and ("module", "ipip") not in kinds
    assert ("link", "tunl0") in kinds and ("link", "ip6tnl0") in kinds
    assert ("sysctl", "net.ipv4.conf.tunl0.rp_filter") in kinds
    assert kinds[-2:] == [("address", "10.99.100.1/32 dev tunl0"),
                          ("address", "fd00:99:100::1/128 dev ip6tnl0")]


def test_ipv6_up_l3_applies_verifies_and_second_run_changes_nothing():
    host = FakeRealServerHost()
    code, out, err = call(host, "up", "--vip", VIP6, "--vip", VIP6_2, "--mode", "l3-dsr",
                          "--detailed-exitcode")
    assert code == 2, err
    assert "+ module ip6_tunnel  (creates ip6tnl0)" in out
    assert "~ link ip6tnl0 absent -> up" in out
    assert "+ address fd00:99:100::2/128 dev ip6tnl0" in out
    assert "sysctl" not in out and "tunl0 " not in out
    assert "Applied and verified: this real server is ready for l3-dsr" in out and "on ip6tnl0" in out
    assert host.changes[0] == "modprobe ip6_tunnel" and host.links["ip6tnl0"] is True
    assert {VipAddress("ip6tnl0", VIP6, 128), VipAddress("ip6tnl0", VIP6_2, 128)} <= host.addresses
    assert host.sysctls == FakeRealServerHost.SYSCTL_DEFAULTS      # IPv6 needs no sysctl
    before = list(host.changes)
    code, out, _ = call(host, "up", "--vip", VIP6, "--vip", VIP6_2, "--mode", "l3-dsr",
                        "--detailed-exitcode")
    assert code == 0 and host.changes == before and out.startswith("No changes")


def test_ipv6_down_removes_the_128_from_lo_and_ip6tnl0_only():
    host = FakeRealServerHost(ip6_tunnel_loaded=True)
    call(host, "up", "--vip", VIP6, "--mode", "l2-dsr")
    call(host, "up", "--vip", VIP6, "--vip", VIP, "--mode", "l3-dsr")
    code, report = call_json(host, "down", "--vip", VIP6, "--detailed-exitcode")
    assert code == 2 and report["verified"] is True
    assert [op["key"] for op in report["ops"]] == ["fd00:99:100::1/128 dev lo",
                                                   "fd00:99:100::1/128 dev ip6tnl0"]
    assert VipAddress("tunl0", VIP, 32) in host.addresses and host.links["ip6tnl0"] is True
    code, out, _ = call(host, "down", "--vip", VIP6, "--detailed-exitcode")
    assert code == 0 and out.startswith("No changes: fd00:99:100::1 no longer on lo or ip6tnl0.")


def test_missing_ip6_tunnel_module_is_a_clear_error():
    host = FakeRealServerHost(ip6_tunnel_available=False)
    code, report = call_json(host, "up", "--vip", VIP6, "--mode", "l3-dsr")
    assert code == 1
    (msg,) = report["errors"]
    assert "modprobe ip6_tunnel" in msg and "l3-dsr needs the ip6_tunnel module for ip6tnl0" in msg
    assert msg.endswith("nothing was changed")


def test_ip6_tunnel_loaded_but_no_ip6tnl0_in_this_netns_names_the_sysctl():
    host = FakeRealServerHost(tunnel_in_netns=False)
    code, _, err = call(host, "up", "--vip", VIP6, "--mode", "l3-dsr")
    assert code == 1
    assert "ip6tnl0 does not exist" in err and "fb_tunnels_only_for_init_net" in err


def test_ipv6_disabled_on_lo_is_a_clear_error():
    host = FakeRealServerHost(ipv6_disabled={"lo"})
    code, _, err = call(host, "up", "--vip", VIP6, "--mode", "l2-dsr")
    assert code == 1 and "Permission denied" in err and "net.ipv6.conf.lo.disable_ipv6" in err


def test_an_ipv6_vip_on_eth0_is_warned_about_as_ndp():
    host = FakeRealServerHost()
    host.links["eth0"] = True
    host.addresses.add(VipAddress("eth0", VIP6, 64))
    code, report = call_json(host, "up", "--vip", VIP6, "--mode", "l2-dsr")
    assert code == 0 and "eth0" in report["warnings"][0] and "neighbour solicitations" in report["warnings"][0]
