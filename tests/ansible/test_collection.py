"""The pask.ipvs collection as users get it: built into a tarball, installed from
it with no network, documented by ansible-doc and run from the installed copy."""

from __future__ import annotations

import os
import subprocess
import tarfile
import tomllib

import yaml
from ansible_play import ansible_bin
from test_ansible_module import CONVERGE, ROOT, WEB, COLLECTION, Stubbed

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def run(tool: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(ansible_bin(tool)), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ANSIBLE_NOCOLOR": "1", **(env or {})})
    assert done.returncode == 0, f"{tool} {' '.join(args)}\n{done.stdout}\n{done.stderr}"
    return done


def test_galaxy_version_is_the_project_version():
    galaxy = yaml.safe_load((COLLECTION / "galaxy.yml").read_text())
    assert (galaxy["namespace"], galaxy["name"], galaxy["version"]) == ("pask", "ipvs", VERSION)


def test_the_built_collection_installs_offline_and_runs_from_the_installed_copy(tmp_path):
    run("ansible-galaxy", "collection", "build", "--output-path", str(tmp_path), str(COLLECTION))
    tarball = tmp_path / f"pask-ipvs-{VERSION}.tar.gz"
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert {"MANIFEST.json", "FILES.json", "plugins/modules/pask_apply.py", "meta/runtime.yml",
            "roles/pask_ipvs/tasks/main.yml", "roles/pask_ipvs/templates/pask-healthd.service.j2",
            "roles/pask_ipvs/templates/pask-apply.service.j2"} <= names
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/output")]

    installed = tmp_path / "installed"
    run("ansible-galaxy", "collection", "install", "--offline", "-p", str(installed), str(tarball))
    module = installed / "ansible_collections" / "pask" / "ipvs" / "plugins" / "modules" / "pask_apply.py"
    assert module.read_text() == (COLLECTION / "plugins" / "modules" / "pask_apply.py").read_text()

    only_installed = {"ANSIBLE_COLLECTIONS_PATH": str(installed), "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
                      "HOME": str(tmp_path)}
    doc = run("ansible-doc", "-t", "module", "pask.ipvs.pask_apply", env=only_installed)
    assert str(module) in doc.stdout and "check_mode" in doc.stdout
    role_doc = run("ansible-doc", "-t", "role", "pask.ipvs.pask_ipvs", env=only_installed)
    assert "pask_services" in role_doc.stdout

    stubbed = Stubbed(tmp_path / "play")
    p = stubbed.playbook(CONVERGE, pask_services=[WEB], envvars=only_installed)
    assert p.rc == 0, p.dump()
    assert p.task("Apply the config to the kernel")["changed"] is True
    assert stubbed.kernel() == {"web": WEB}
