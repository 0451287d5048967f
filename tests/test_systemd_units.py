"""The systemd units: one source (the role's templates), verified by systemd itself.

packaging/*.service are the templates rendered for a pip install; the role
renders the same templates with its own paths. systemd-analyze verify checks
every directive and that the ExecStart commands exist (the paths are pointed at
.venv/bin, where tools/setup.sh installs the commands).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess

import pytest

from conftest import REPO

_spec = importlib.util.spec_from_file_location("render_units", REPO / "tools" / "render_units.py")
render_units = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_units)

VENV_BIN = REPO / ".venv" / "bin"


def verify(tmp_path, units: dict[str, str]) -> subprocess.CompletedProcess:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze missing: tools/setup.sh installs Debian's systemd"
    paths = []
    for name, text in units.items():
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    return subprocess.run([tool, "verify", "--man=no", *paths], capture_output=True, text=True)


@pytest.mark.parametrize("name", render_units.UNITS)
def test_packaging_holds_the_templates_rendered(name):
    wanted = render_units.render(name, render_units.PACKAGING_VARS)
    assert (REPO / "packaging" / name).read_text() == wanted, \
        "packaging/ is stale: run .venv/bin/python tools/render_units.py"


def test_systemd_analyze_verify_accepts_the_packaged_units(tmp_path):
    units = {name: (REPO / "packaging" / name).read_text().replace("/usr/local/bin/", f"{VENV_BIN}/")
             for name in render_units.UNITS}
    done = verify(tmp_path, units)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_without_apply_on_start_healthd_stands_alone(tmp_path):
    variables = {**render_units.PACKAGING_VARS, "pask_bin_dir": str(VENV_BIN),
                 "pask_healthd_apply_on_start": False}
    text = render_units.render("pask-healthd.service", variables)
    unit_section = text.split("[Unit]")[1].split("[Service]")[0]
    assert "pask-apply" not in "".join(l for l in unit_section.splitlines() if not l.startswith("#"))
    done = verify(tmp_path, {"pask-healthd.service": text})
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a misspelt directive and a missing command are reported."""
    text = (REPO / "packaging" / "pask-healthd.service").read_text()
    text = text.replace("ProtectSystem=strict", "ProtectSystem=strictly")
    done = verify(tmp_path, {"pask-healthd.service": text})
    assert "protect system" in done.stderr.lower() and "/usr/local/bin/pask-healthd" in done.stderr


@pytest.mark.parametrize("name, caps", [("pask-healthd.service", {"CAP_NET_ADMIN"}),
                                        ("pask-apply.service", {"CAP_NET_ADMIN", "CAP_SYS_MODULE"})])
def test_capabilities_are_only_what_the_job_needs(name, caps):
    text = (REPO / "packaging" / name).read_text()
    [line] = re.findall(r"^CapabilityBoundingSet=(.*)$", text, re.M)
    assert set(line.split()) == caps
    for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                    "RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6"):
        assert f"\n{setting}\n" in text, setting


def test_healthd_restarts_on_failure_but_not_forever():
    text = (REPO / "packaging" / "pask-healthd.service").read_text()
    assert "\nRestart=on-failure\n" in text
    assert "\nStartLimitBurst=5\n" in text.split("[Service]")[0]


def test_state_files_elsewhere_are_made_writable(tmp_path):
    """ProtectSystem=strict leaves only /var/lib/pask writable: a role run with another
    state or health path gets those directories too, or the daemon could not write."""
    variables = {**render_units.PACKAGING_VARS, "pask_bin_dir": str(VENV_BIN),
                 "pask_state_file": "/srv/pask/state.json", "pask_health_file": "/run/pask/health.json"}
    units = {name: render_units.render(name, variables) for name in render_units.UNITS}
    assert "\nReadWritePaths=/proc/sys/net /srv/pask /run/pask\n" in units["pask-apply.service"]
    assert "\nReadWritePaths=/srv/pask /run/pask\n" in units["pask-healthd.service"]
    assert "ReadWritePaths" not in (REPO / "packaging" / "pask-healthd.service").read_text()
    done = verify(tmp_path, units)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
