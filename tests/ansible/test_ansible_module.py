"""The Ansible side: the pask_apply module's mapping and parsing, and the role run
by ansible-playbook against stand-ins of pask-apply (ansible/tests/stubs).

The module is imported from its file with a stand-in AnsibleModule (Ansible is
installed for Debian's Python, not necessarily for this one). The role tests
run the real ansible-playbook on this host with ``connection: local``; they
touch no kernel: pask-apply and `pask realserver` are the stubs, while
`pask validate` (pure) is the real one, so every config the role writes is
checked by pask's own validator.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import yaml
from ansible_play import PlayResult, run_playbook

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
COLLECTION = ANSIBLE / "ansible_collections" / "pask" / "ipvs"
MODULE_FILE = COLLECTION / "plugins" / "modules" / "pask_apply.py"
STUBS = ANSIBLE / "tests" / "stubs"

_spec = importlib.util.spec_from_file_location("render_units", ROOT / "tools" / "render_units.py")
render_units = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_units)


# -- the module, with a stand-in AnsibleModule ----------------------------------------

class ModuleExit(Exception):
    def __init__(self, failed: bool, result: dict):
        super().__init__(result.get("msg", ""))
        self.failed, self.result = failed, result


class FakeAnsibleModule:
    """Enough of AnsibleModule: params with defaults, scripted run_command, exit/fail captured."""

    params_in: dict = {}
    check_mode_in = False
    diff_in = False
    bin_paths: dict = {}
    reply: tuple = (0, "", "")
    commands: list = []

    def __init__(self, argument_spec: dict, supports_check_mode: bool = False):
        assert supports_check_mode is True
        unknown = set(self.params_in) - set(argument_spec)
        assert not unknown, f"unsupported parameters {unknown}"
        self.params = {k: self.params_in.get(k, spec.get("default")) for k, spec in argument_spec.items()}
        missing = [k for k, spec in argument_spec.items() if spec.get("required") and self.params[k] is None]
        assert not missing, f"missing required {missing}"
        self.check_mode = self.check_mode_in
        self._diff = self.diff_in

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return self.bin_paths.get(name)

    def run_command(self, cmd):
        FakeAnsibleModule.commands.append(list(cmd))
        return self.reply

    def exit_json(self, **result):
        raise ModuleExit(False, result)

    def fail_json(self, **result):
        assert "msg" in result
        raise ModuleExit(True, result)


@pytest.fixture
def mod(monkeypatch):
    basic = types.ModuleType("ansible.module_utils.basic")
    basic.AnsibleModule = FakeAnsibleModule
    for name, m in (("ansible", types.ModuleType("ansible")),
                    ("ansible.module_utils", types.ModuleType("ansible.module_utils")),
                    ("ansible.module_utils.basic", basic)):
        monkeypatch.setitem(sys.modules, name, m)
    spec = importlib.util.spec_from_file_location("pask_apply_module_under_test", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    FakeAnsibleModule.params_in, FakeAnsibleModule.commands = {}, []
    FakeAnsibleModule.check_mode_in = FakeAnsibleModule.diff_in = False
    FakeAnsibleModule.bin_paths = {"pask-apply": "/usr/local/sbin/pask-apply"}
    return module


def report(ops=(), *, dry_run=False, errors=(), verified=True) -> str:
    """A pask-apply --format json object as the CLI contract shapes it."""
    ops = list(ops)
    counts = {"add": 0, "set": 0, "delete": 0, "replace": 0}
    for op in ops:
        counts[op["action"]] += 1
    lines = [f"+ {op['kind']} {op['key']}" for op in ops]
    lines.append(f"Plan: {counts['add']} to add, {counts['set']} to change, {counts['delete']} to delete."
                 if ops else "No changes. The kernel matches the config.")
    return json.dumps({"config": "/etc/pask/config.yaml", "dry_run": dry_run, "changed": bool(ops),
                       "ops": ops, "counts": counts, "plan_text": "\n".join(lines) + "\n",
                       "verified": None if dry_run else verified, "drift": [], "errors": list(errors)})


ADD_DEST = {"action": "add", "kind": "dest", "key": "10.99.100.1:80/tcp -> 10.99.2.11:8080",
            "service": "web", "before": None, "after": {"weight": 1}, "reason": ""}


def test_build_command_maps_every_parameter(mod):
    assert mod.build_command("pask-apply", {"config": "/etc/pask/config.yaml"}, False) == [
        "pask-apply", "--format", "json", "--detailed-exitcode", "/etc/pask/config.yaml"]
    params = {"config": "c.yaml", "state_file": "/s.json", "health_file": "/h.json"}
    assert mod.build_command("/opt/pask-ipvs/bin/pask-apply", params, True) == [
        "/opt/pask-ipvs/bin/pask-apply", "--format", "json", "--detailed-exitcode", "--dry-run",
        "--state-file", "/s.json", "--health-file", "/h.json", "c.yaml"]


def test_build_command_names_the_ha_node(mod):
    assert mod.build_command("pask-apply", {"config": "c.yaml", "node": "lb2"}, False)[-3:] == [
        "--node", "lb2", "c.yaml"]


def test_exit_0_is_unchanged(mod):
    r = mod.interpret(0, report(), "", want_diff=True)
    assert r["failed"] is False and r["changed"] is False and "diff" not in r
    assert r["plan_text"].startswith("No changes") and r["verified"] is True


def test_exit_2_is_changed_with_the_plan_as_diff(mod):
    r = mod.interpret(2, report([ADD_DEST]), "", want_diff=True)
    assert r["failed"] is False and r["changed"] is True
    assert r["diff"] == {"prepared": r["plan_text"]}
    assert "+ dest 10.99.100.1:80/tcp -> 10.99.2.11:8080" in r["diff"]["prepared"]
    assert r["counts"]["add"] == 1 and r["ops"] == [ADD_DEST]
    assert r["msg"].startswith("Changed: 1 to add")
    assert "diff" not in mod.interpret(2, report([ADD_DEST]), "", want_diff=False)
    assert mod.interpret(2, report([ADD_DEST], dry_run=True), "")["msg"].startswith("Would change:")


def test_exit_1_fails_with_every_pask_message(mod):
    errors = ["/etc/pask/config.yaml:7: $.services[0].real_servers[0].weight: must be 0-65535, got -1",
              "/etc/pask/config.yaml:9: $.services[0].scheduler: unknown scheduler 'fast'",
              "/etc/pask/config.yaml: 2 problem(s); nothing was changed"]
    r = mod.interpret(1, report(errors=errors, verified=None), "\n".join(errors))
    assert r["failed"] is True and r["changed"] is False
    assert r["errors"] == errors
    assert r["msg"] == "pask-apply failed: " + "; ".join(errors)


def test_exit_1_without_json_takes_the_messages_from_stderr(mod):
    r = mod.interpret(1, "", "usage: pask-apply ...\npask-apply: error: the following arguments are required: CONFIG\n")
    assert r["failed"] is True
    assert r["errors"][-1] == "pask-apply: error: the following arguments are required: CONFIG"
    assert "required: CONFIG" in r["msg"]


def test_success_without_json_is_a_failure(mod):
    r = mod.interpret(0, "not json at all", "")
    assert r["failed"] is True and "no JSON" in r["msg"]


def test_a_stray_line_before_the_json_is_tolerated(mod):
    r = mod.interpret(2, "pask-apply: warning: something\n" + report([ADD_DEST]), "")
    assert r["failed"] is False and r["changed"] is True


def test_unexpected_exit_status_fails(mod):
    r = mod.interpret(127, "", "sh: pask-apply: not found")
    assert r["failed"] is True and "unexpected exit status 127" in r["msg"]


def test_main_in_check_mode_with_diff(mod):
    FakeAnsibleModule.params_in = {"config": "/etc/pask/config.yaml", "state_file": "/tmp/s.json"}
    FakeAnsibleModule.check_mode_in = FakeAnsibleModule.diff_in = True
    FakeAnsibleModule.reply = (2, report([ADD_DEST], dry_run=True), "")
    with pytest.raises(ModuleExit) as e:
        mod.main()
    assert e.value.failed is False
    result = e.value.result
    assert result["changed"] is True and result["diff"]["prepared"].startswith("+ dest")
    assert FakeAnsibleModule.commands == [result["cmd"]] == [[
        "/usr/local/sbin/pask-apply", "--format", "json", "--detailed-exitcode", "--dry-run",
        "--state-file", "/tmp/s.json", "/etc/pask/config.yaml"]]


def test_main_fails_with_pask_errors(mod):
    FakeAnsibleModule.params_in = {"config": "/etc/pask/config.yaml", "executable": "/x/pask-apply"}
    FakeAnsibleModule.reply = (1, report(errors=["c.yaml:3: $.services: bad"], verified=None), "")
    with pytest.raises(ModuleExit) as e:
        mod.main()
    assert e.value.failed is True
    assert e.value.result["msg"] == "pask-apply failed: c.yaml:3: $.services: bad"
    assert e.value.result["cmd"][0] == "/x/pask-apply"  # a path is used as it is


def test_main_fails_clearly_when_pask_apply_is_not_installed(mod):
    FakeAnsibleModule.params_in = {"config": "/etc/pask/config.yaml"}
    FakeAnsibleModule.bin_paths = {}
    with pytest.raises(ModuleExit) as e:
        mod.main()
    assert e.value.failed is True and "pask-apply not found" in e.value.result["msg"]
    assert FakeAnsibleModule.commands == []


def test_documentation_matches_the_argument_spec(mod):
    doc = yaml.safe_load(mod.DOCUMENTATION)
    assert set(doc["options"]) == set(mod.ARGUMENT_SPEC)
    for name, spec in mod.ARGUMENT_SPEC.items():
        assert doc["options"][name]["type"] == spec["type"], name
        assert doc["options"][name].get("default") == spec.get("default"), name
        assert bool(doc["options"][name].get("required")) == bool(spec.get("required")), name
    yaml.safe_load(mod.EXAMPLES)
    yaml.safe_load(mod.RETURN)


# -- the role, run by ansible-playbook against the stubs ----------------------------------

class Stubbed:
    """A bin directory of stubs, the files the role writes, and ansible-playbook runs."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.bin = tmp / "bin"
        shutil.copytree(STUBS, self.bin)
        for name in ("pask", "pask-apply"):
            (self.bin / name).chmod(0o755)
        stub_pask = self.bin / "pask-stub"
        (self.bin / "pask").rename(stub_pask)
        # `pask validate` is pure: use the real one; `pask realserver` is the stub.
        (self.bin / "pask").write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = validate ]; then PYTHONPATH={ROOT} exec {sys.executable} -c '
            '"import sys; from pask_ipvs.cli import main; sys.exit(main())" "$@"; fi\n'
            f'exec {stub_pask} "$@"\n')
        (self.bin / "pask").chmod(0o755)
        self.config = tmp / "etc" / "config.yaml"
        self.vars = {
            "pask_install": False, "pask_healthd_enabled": False, "pask_bin_dir": str(self.bin),
            "pask_config_file": str(self.config), "pask_state_file": str(tmp / "lib" / "state.json"),
            "pask_health_file": str(tmp / "lib" / "health.json"),
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        }
        self.runs = 0

    def calls(self) -> list[list[str]]:
        log = self.bin / "calls.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def kernel(self) -> dict:
        path = self.bin / "kernel.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def playbook(self, playbook: str | Path, *flags: str, inventory: str = "localhost,",
                 envvars: dict | None = None, **extra_vars) -> PlayResult:
        self.runs += 1
        return run_playbook(playbook, self.tmp / f"run{self.runs}", *flags, inventory=inventory,
                            extravars={**self.vars, **extra_vars}, envvars=envvars)


WEB = {"name": "web", "vip": "10.99.100.1", "port": 80, "protocol": "tcp", "scheduler": "rr",
       "nat_mode": "dest-nat", "real_servers": [{"address": "10.99.2.11", "port": 8080},
                                                 {"address": "10.99.2.12", "port": 8080}]}
API = {**WEB, "name": "api", "port": 443, "real_servers": [{"address": "10.99.2.13", "port": 8443}]}
CONVERGE = ANSIBLE / "tests" / "converge.yml"
REALSERVER = ANSIBLE / "tests" / "realserver.yml"


@pytest.fixture
def stubbed(tmp_path) -> Stubbed:
    return Stubbed(tmp_path)


def test_role_converges_is_idempotent_plans_in_check_mode_and_rejects_a_bad_config(stubbed):
    """One host's life: converge, converge again, plan a change, try a bad config.

    (One test, because every step needs the state the previous one left, and
    each ansible-playbook run costs seconds.)
    """
    p = stubbed.playbook(CONVERGE, pask_services=[WEB], pask_drain_timeout=30)
    assert p.rc == 0, p.dump()
    applied = p.task("Apply the config to the kernel")
    assert applied["changed"] is True and applied["rc"] == 2
    assert applied["plan_text"] == "+ service web\nPlan: 1 to add, 0 to change, 0 to delete.\n"
    assert p.task("Write the pask config")["changed"] is True
    written = yaml.safe_load(stubbed.config.read_text())
    assert written == {"version": 1, "vip_interface": "pask0", "drain_timeout": 30, "services": [WEB]}
    assert stubbed.kernel() == {"web": WEB}
    (apply,) = [c for c in stubbed.calls() if c[0] == "pask-apply"]
    assert apply == ["pask-apply", "--format", "json", "--detailed-exitcode",
                     "--state-file", stubbed.vars["pask_state_file"],
                     "--health-file", stubbed.vars["pask_health_file"], str(stubbed.config)]

    # the same variables again: nothing changes
    p = stubbed.playbook(CONVERGE, pask_services=[WEB], pask_drain_timeout=30)
    assert p.rc == 0 and p.changed() == 0, p.dump()
    assert p.task("Apply the config to the kernel")["rc"] == 0

    # check mode with a new service: the plan of the candidate config, as a diff; nothing written
    config_before, kernel_before = stubbed.config.read_text(), stubbed.kernel()
    p = stubbed.playbook(CONVERGE, "--check", "--diff", pask_services=[WEB, API],
                                  pask_drain_timeout=30)
    assert p.rc == 0, p.dump()
    planned = p.task("Apply the config to the kernel")
    assert planned["changed"] is True
    diff = planned["diff"]
    assert (diff[0] if isinstance(diff, list) else diff)["prepared"] == (
        "+ service api\nPlan: 1 to add, 0 to change, 0 to delete.\n")
    assert stubbed.config.read_text() == config_before and stubbed.kernel() == kernel_before
    last = [c for c in stubbed.calls() if c[0] == "pask-apply"][-1]
    assert "--dry-run" in last and last[-1] != str(stubbed.config)
    assert not Path(last[-1]).exists(), "the candidate config is removed after the plan"

    # a config pask rejects: the template's `pask validate` fails; file and kernel untouched
    calls = len(stubbed.calls())
    bad = {**WEB, "real_servers": [{"address": "10.99.2.11", "weight": -1}]}
    p = stubbed.playbook(CONVERGE, pask_services=[bad])
    assert p.rc != 0
    failed = p.task("Write the pask config")
    assert failed.get("failed") is True
    assert "$.services[0].real_servers[0].weight" in failed["msg"] + failed.get("stderr", "")
    assert stubbed.config.read_text() == config_before and stubbed.kernel() == kernel_before
    assert len(stubbed.calls()) == calls, "pask-apply must not run after a failed validation"


def test_a_pask_apply_error_fails_the_task_with_its_messages(stubbed):
    refused = {**WEB, "name": "refuse-me"}
    p = stubbed.playbook(CONVERGE, pask_services=[refused])
    assert p.rc != 0
    failed = p.task("Apply the config to the kernel")
    assert failed["failed"] is True
    assert failed["msg"].startswith("pask-apply failed: apply failed: add service refuse-me")
    assert failed["errors"][-1].endswith("nothing was changed")


def test_realserver_tasks_run_pask_realserver_with_detailed_exit_codes(stubbed):
    vips = ["10.99.100.1", "10.99.100.2"]
    p = stubbed.playbook(REALSERVER, pask_realserver_vips=vips, pask_realserver_mode="l3-dsr")
    assert p.rc == 0, p.dump()
    ran = p.task("Prepare this host as a DSR real server")
    assert ran["changed"] is True and ran["rc"] == 2
    assert ran["cmd"] == [str(stubbed.bin / "pask"), "realserver", "up", "--mode", "l3-dsr",
                          "--detailed-exitcode", "--vip", vips[0], "--vip", vips[1]]

    p = stubbed.playbook(REALSERVER, pask_realserver_vips=vips, pask_realserver_mode="l3-dsr")
    assert p.rc == 0 and p.changed() == 0

    p = stubbed.playbook(REALSERVER, "--check", pask_realserver_vips=vips + ["10.99.100.3"],
                                  pask_realserver_mode="l3-dsr")
    ran = p.task("Prepare this host as a DSR real server")
    assert p.rc == 0 and ran["changed"] is True and ran["cmd"][-1] == "--dry-run"
    assert "+ address 10.99.100.3/32 dev tunl0" in ran["stdout"]
    assert json.loads((stubbed.bin / "realserver.json").read_text()) == vips

    p = stubbed.playbook(REALSERVER, pask_realserver_vips=vips[:1], pask_realserver_state="absent")
    ran = p.task("Prepare this host as a DSR real server")
    assert p.rc == 0 and ran["changed"] is True and ran["cmd"][2] == "down"


def test_realserver_tasks_need_a_vip(stubbed):
    p = stubbed.playbook(REALSERVER)
    assert p.rc != 0
    assert "pask_realserver_vips must list at least one VIP" in p.task("Check the real-server variables")["msg"]


def test_the_example_site_playbook_plans_in_check_mode(stubbed):
    """The README's example: its inventory's services pass `pask validate` and get planned."""
    p = stubbed.playbook(ANSIBLE / "playbooks" / "site.yml", "--check", "--diff",
                                  inventory=str(ANSIBLE / "inventory" / "example.yml"),
                                  ansible_connection="local", ansible_become=False,
                                  pask_healthd_enabled=True)
    assert p.rc == 0, p.dump()
    planned = p.task("Apply the config to the kernel", host="lb1.example.net")
    assert planned["changed"] is True and "+ service web" in planned["plan_text"]
    # The units Ansible would write are the templates packaging/ is rendered from,
    # with the role's paths: tools/render_units.py renders exactly as Ansible does.
    paths = {k: stubbed.vars[k] for k in ("pask_bin_dir", "pask_config_file", "pask_state_file",
                                          "pask_health_file")}
    for name in render_units.UNITS:
        unit = p.task(f"Install the {name.split('.')[0]} systemd unit", host="lb1.example.net")
        assert unit["changed"] is True
        text = unit["diff"][0]["after"] if isinstance(unit["diff"], list) else unit["diff"]["after"]
        managed = text.splitlines()[0].removeprefix("# ")
        assert text == render_units.render(name, {**render_units.PACKAGING_VARS, **paths,
                                                  "ansible_managed": managed})
        assert f"ExecStart={stubbed.bin}/{name.split('.')[0]} --state-file " in text
        assert not Path("/etc/systemd/system", name).exists()
    for rs in ("web1.example.net", "web2.example.net"):
        ran = p.task("Prepare this host as a DSR real server", host=rs)
        assert ran["cmd"][-3:] == ["--vip", "10.99.100.1", "--dry-run"]


def test_the_ha_pair_inventory_plans_both_nodes_from_one_config(stubbed):
    """Both nodes of the example pair: the same `ha:` config passes `pask validate` on each,
    and each node's pask-apply is told which node it is."""
    p = stubbed.playbook(ANSIBLE / "playbooks" / "site.yml", "--check",
                         inventory=str(ANSIBLE / "inventory" / "ha-pair.yml"),
                         ansible_connection="local", ansible_become=False, pask_healthd_enabled=False)
    assert p.rc == 0, p.dump()
    for node in ("lb1", "lb2"):
        planned = p.task("Apply the config to the kernel", host=f"{node}.example.net")
        assert planned["cmd"][-3:-1] == ["--node", node]
        assert "--dry-run" in planned["cmd"]
