"""The pask_ipvs Ansible role on a real kernel: a playbook with ``connection: local``,
run inside the lab's load-balancer namespace, converges a config (real traffic
passes through the VIP), a second run changes nothing, and a check-mode run on
a changed config shows the plan as a diff and leaves the kernel as it was.

The role's install and systemd steps are off (pask_install / pask_healthd_enabled
false): the VM has no network and no systemd.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from ansible_play import PlayResult, run_playbook
from lab import CLIENT, CLIENT_IP, LB, ROOT, SERVERS, VIP, Lab, ipvs_snapshot, service, who

ANSIBLE = ROOT / "ansible"
CONVERGE = ANSIBLE / "tests" / "converge.yml"


def bin_dir(tmp: Path) -> Path:
    """Where the role finds pask and pask-apply: the venv's, else wrappers around this Python."""
    venv = ROOT / ".venv" / "bin"
    if (venv / "pask").exists() and (venv / "pask-apply").exists():
        return venv
    out = tmp / "bin"
    out.mkdir(exist_ok=True)
    for name, module in (("pask", "pask_ipvs.cli"), ("pask-apply", "pask_ipvs.cli.apply"),
                         ("pask-healthd", "pask_ipvs.cli.healthd")):
        (out / name).write_text(
            f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -c "
            f"'import sys; from {module} import main; sys.exit(main())' \"$@\"\n")
        (out / name).chmod(0o755)
    return out


def playbook(lab: Lab, tmp: Path, services: list[dict], *flags: str) -> PlayResult:
    """ansible-playbook converge.yml in the LB namespace, its results read through ansible-runner."""
    work = tmp / f"run{len(list(tmp.glob('run*')))}"
    return run_playbook(CONVERGE, work, *flags, prefix=("ip", "netns", "exec", LB),
                        extravars={
        "pask_install": False, "pask_healthd_enabled": False, "pask_bin_dir": str(bin_dir(tmp)),
        # beside the state file: one directory for the role to create (each module costs ~15 s in TCG)
        "pask_config_file": str(lab.dir / "ansible-config.yaml"),
        "pask_state_file": str(lab.state_file), "pask_health_file": str(lab.health_file),
        "pask_vip_interface": "pask0", "pask_services": services,
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
    })


def test_role_converges_then_is_idempotent_and_check_mode_changes_nothing(lb: Lab, tmp_path: Path):
    web = service("web", servers=("rs1", "rs2"))
    p = playbook(lb, tmp_path, [web])
    assert p.rc == 0, p.dump()
    applied = p.task("Apply the config to the kernel")
    assert applied["changed"] is True and applied["verified"] is True, applied
    assert "+ service" in applied["plan_text"]

    seen = Counter()
    for _ in range(6):
        name, peer = who(CLIENT, VIP, 80)
        assert peer == CLIENT_IP
        seen[name] += 1
    assert set(seen) == {"rs1", "rs2"}, seen

    kernel = ipvs_snapshot()
    config = (lb.dir / "ansible-config.yaml").read_text()
    p = playbook(lb, tmp_path, [web])
    assert p.rc == 0, p.dump()
    assert p.changed() == 0, p.dump()
    assert p.task("Apply the config to the kernel")["rc"] == 0
    assert ipvs_snapshot() == kernel

    more = service("web", servers=("rs1", "rs2", "rs3"))
    p = playbook(lb, tmp_path, [more], "--check", "--diff")
    assert p.rc == 0, p.dump()
    planned = p.task("Apply the config to the kernel")
    assert planned["changed"] is True and planned["dry_run"] is True, planned
    diff = planned["diff"]
    prepared = (diff[0] if isinstance(diff, list) else diff)["prepared"]
    assert f"{SERVERS['rs3']}:8080" in prepared and "+ dest" in prepared, prepared
    assert ipvs_snapshot() == kernel, "check mode changed the kernel"
    assert (lb.dir / "ansible-config.yaml").read_text() == config, "check mode changed the config file"
    assert {who(CLIENT, VIP, 80)[0] for _ in range(4)} <= {"rs1", "rs2"}
