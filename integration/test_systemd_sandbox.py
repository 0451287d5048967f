"""The systemd units' capability sets are enough, on a real kernel.

The VM has no systemd, so this runs the commands as the units would leave
them: root with the bounding set of packaging/*.service (CapabilityBoundingSet)
and no_new_privs, through util-linux's setpriv. pask-apply then programs IPVS,
nftables (Both NAT), the VIP and sysctls, and real traffic passes; pask-healthd
sets a dead server's weight to 0. The same commands with an empty bounding set
fail: the sandbox is real, not a no-op.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

from lab import (CLIENT, LB, LB_LAN_IP, ROOT, SERVERS, VIP, config, ipvs_snapshot, pask_apply_argv,
                 service, who)
from test_health import kernel_weights

SETPRIV = "/usr/bin/setpriv"


def bounding_set(unit: str) -> str:
    """setpriv's --bounding-set argument for the unit's CapabilityBoundingSet."""
    [line] = re.findall(r"^CapabilityBoundingSet=(.*)$", (ROOT / "packaging" / unit).read_text(), re.M)
    caps = [c.removeprefix("CAP_").lower() for c in line.split()]
    return ",".join(["-all", *(f"+{c}" for c in caps)])


def as_unit(bounding: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", LB, SETPRIV, "--no-new-privs", f"--bounding-set={bounding}",
            "--inh-caps=-all", *argv]


def test_apply_and_healthd_work_with_only_their_units_capabilities(lb):
    cfg = config(service("bnat", nat_mode="both-nat", snat_ip=LB_LAN_IP,
                         health={"type": "tcp", "interval": 1, "timeout": 1, "rise": 1, "fall": 1}))
    path = lb.write_config(cfg)
    files = ["--state-file", str(lb.state_file), "--health-file", str(lb.health_file)]

    denied = subprocess.run(as_unit("-all", [*pask_apply_argv(), *files, str(path)]),
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert denied.returncode == 1, denied.stdout + denied.stderr
    assert VIP not in ipvs_snapshot(), "refused, yet something was applied"

    done = subprocess.run(as_unit(bounding_set("pask-apply.service"), [*pask_apply_argv(), *files, str(path)]),
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    answers = Counter(who(CLIENT, VIP, 80)[0] for _ in range(6))
    assert set(answers) == set(SERVERS), answers

    lb.stop_server("rs3")
    try:
        healthd = [sys.executable, "-m", "pask_ipvs.cli.healthd", "--once", *files, str(path)]
        checked = subprocess.run(as_unit(bounding_set("pask-healthd.service"), healthd),
                                 capture_output=True, text=True, timeout=300, cwd=ROOT)
    finally:
        lb.start_server("rs3")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert kernel_weights()[SERVERS["rs3"]] == 0
    assert {kernel_weights()[SERVERS[s]] for s in ("rs1", "rs2")} == {1}
