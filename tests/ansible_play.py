"""Run a playbook and read its results as data, through ansible-runner.

ansible-runner is made for this: it runs ansible-playbook with its own stdout
callback and writes one JSON event per task result into its artifacts, so
the tests read what every task returned without parsing Ansible's screen
output or relying on a callback plugin from a collection. ansible-core,
ansible-runner and ansible-lint are installed into .venv by tools/setup.sh
(the `test` extra of pyproject.toml); a missing one fails the test with that
install step, never a skip.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE = ROOT / "ansible"

#: Event types that carry one host's result of one task.
RESULT_EVENTS = {"runner_on_ok": "ok", "runner_on_failed": "failed", "runner_on_skipped": "skipped",
                 "runner_on_unreachable": "unreachable"}


def ansible_bin(name: str = "ansible-playbook") -> Path:
    """An Ansible command of this interpreter's environment (the project's .venv)."""
    exe = Path(sys.executable).parent / name
    if not exe.exists():
        pytest.fail(f"{exe} not found: run tools/setup.sh (it installs ansible-core, ansible-runner "
                    "and ansible-lint into .venv)")
    return exe


@dataclass
class PlayResult:
    """What one ansible-playbook run did: its exit status, per-task results and stats."""

    rc: int
    status: str
    results: list[dict] = field(default_factory=list)   # {"task", "host", "outcome", **res}
    stats: dict = field(default_factory=dict)
    stdout: str = ""

    def task(self, name: str, host: str = "localhost") -> dict:
        """The result of the last task called ``name`` on ``host`` (the role prefix ignored)."""
        found = [r for r in self.results if r["task"] == name and r["host"] == host]
        assert found, (f"no task {name!r} ran on {host}; ran: "
                       + ", ".join(sorted({r["task"] for r in self.results})) + "\n" + self.stdout)
        return found[-1]

    def changed(self, host: str = "localhost") -> int:
        return self.stats.get("changed", {}).get(host, 0)

    def dump(self) -> str:
        return json.dumps({"rc": self.rc, "status": self.status, "stats": self.stats,
                           "results": self.results}, indent=1, default=str) + "\n" + self.stdout


def run_playbook(playbook: str | Path, work: Path, *flags: str, inventory: str = "localhost,",
                 extravars: dict | None = None, envvars: dict | None = None,
                 prefix: list[str] | tuple[str, ...] = (), timeout: int = 900) -> PlayResult:
    """ansible-playbook PLAYBOOK -i INVENTORY FLAGS, its events collected by ansible-runner.

    ``prefix`` runs the command under another (``ip netns exec NS``): ansible-runner
    then starts that binary with ansible-playbook's arguments, and its callback,
    passed in the environment, still writes the events.
    """
    import ansible_runner  # the test extra; imported here so a missing one fails as above

    playbook_exe = ansible_bin("ansible-playbook")
    (work / "runner").mkdir(parents=True, exist_ok=True)
    binary = str(playbook_exe)
    if prefix:
        wrapper = work / "ansible-playbook-wrapper"
        wrapper.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(p) for p in (*prefix, binary))
                           + ' "$@"\n')
        wrapper.chmod(0o755)
        binary = str(wrapper)
    env = {"ANSIBLE_COLLECTIONS_PATH": str(ANSIBLE), "ANSIBLE_NOCOLOR": "1",
           # temp dirs of the run, not of the user running it (whose home may not exist)
           "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"), "ANSIBLE_REMOTE_TMP": str(work / "ansible-remote-tmp"),
           "ANSIBLE_DEPRECATION_WARNINGS": "0",
           "ANSIBLE_PIPELINING": "1", "ANSIBLE_HOST_KEY_CHECKING": "0",
           # the venv's own commands first (the role runs `python -m venv`, pask, ...)
           "PATH": f"{playbook_exe.parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           **(envvars or {})}
    cmdline = " ".join(shlex.quote(a) for a in ("-i", inventory, *flags, str(Path(playbook).resolve())))
    runner = ansible_runner.run(private_data_dir=str(work / "runner"), binary=binary, cmdline=cmdline,
                                extravars=extravars or {}, envvars=env, quiet=True, timeout=timeout)
    results, stats = [], {}
    for event in runner.events:
        data = event.get("event_data", {})
        if event.get("event") in RESULT_EVENTS:
            outcome = RESULT_EVENTS[event["event"]]
            result = {"task": data.get("task", ""), "host": data.get("host", ""), "outcome": outcome,
                      **(data.get("res") or {})}
            if outcome == "failed":   # the event says so; the module's own result may not
                result["failed"] = True
            results.append(result)
        elif event.get("event") == "playbook_on_stats":
            stats = {k: data.get(k) or {} for k in ("ok", "changed", "failures", "skipped", "dark",
                                                   "ignored", "rescued")}
    stdout = runner.stdout.read() if runner.stdout else ""
    return PlayResult(rc=runner.rc, status=runner.status, results=results, stats=stats, stdout=stdout)
