"""ProcessEngines with real processes: a tiny daemon that forks like keepalived, re-reads
its file on SIGHUP and is found again by its command line."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from pask_ipvs.backend.base import BackendError
from pask_ipvs.backend.engines import ProcessEngines, processes, read_file, write_file
from pask_ipvs.objects import Engine, EngineFile

DAEMON = r'''
import os, signal, sys, time
conf, seen = sys.argv[1], sys.argv[1] + ".seen"
def load(*_):
    with open(conf) as f, open(seen + ".tmp", "w") as out:
        out.write(f.read())
    os.replace(seen + ".tmp", seen)
if "--fg" not in sys.argv and os.fork():
    os._exit(0)                     # the parent returns at once, as a daemon's does
os.setsid()
signal.signal(signal.SIGHUP, load)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
load()
while True:
    time.sleep(0.05)
'''


@pytest.fixture
def engine(tmp_path) -> Engine:
    script = tmp_path / "daemon.py"
    script.write_text(DAEMON)
    conf = str(tmp_path / "etc" / "d.conf")
    run = (sys.executable, str(script), conf)
    return Engine("toyd", (EngineFile(conf, "one\n"),), argv=run, foreground_argv=(*run, "--fg"),
                  stale=(str(tmp_path / "etc" / "d.lock"),))


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def seen(engine: Engine) -> str:
    try:
        return Path(engine.files[0].path + ".seen").read_text()
    except FileNotFoundError:
        return ""


def test_start_writes_the_files_and_finds_the_forked_daemon(engine, tmp_path):
    engines = ProcessEngines(systemd=False)
    Path(engine.stale[0]).parent.mkdir(parents=True)
    Path(engine.stale[0]).write_text("left by a killed run")
    assert engines.observe([engine])["toyd"].running is False
    engines.start(engine)
    try:
        observed = engines.observe([engine])["toyd"]
        assert observed.running and observed.files == engine.files
        assert not Path(engine.stale[0]).exists()
        wait_for(lambda: seen(engine) == "one\n")
        with pytest.raises(BackendError, match="already running"):
            engines.start(engine)
        # a reload re-writes the file and signals the running daemon: the same process re-reads it
        pid = engines.pids(engine)[0]
        newer = engine._replace(files=(engine.files[0]._replace(content="two\n"),))
        assert engines.observe([newer])["toyd"].files != newer.files
        engines.reload(newer)
        wait_for(lambda: seen(engine) == "two\n")
        assert engines.pids(engine)[0] == pid
    finally:
        engines.stop(engine)
    assert engines.observe([engine])["toyd"].running is False


def test_a_restart_engine_gets_a_new_process(engine):
    engines = ProcessEngines(systemd=False)
    restart = engine._replace(reload="restart")
    engines.start(restart)
    try:
        pid = engines.pids(restart)[0]
        engines.reload(restart._replace(files=(engine.files[0]._replace(content="three\n"),)))
        wait_for(lambda: seen(engine) == "three\n")
        assert engines.pids(restart)[0] != pid
    finally:
        engines.stop(restart)


def test_a_daemon_that_dies_at_start_is_an_error(tmp_path):
    engines = ProcessEngines(systemd=False)
    dead = Engine("deadd", (EngineFile(str(tmp_path / "x.conf"), ""),),
                  argv=(sys.executable, "-c", "import sys; sys.exit(3)"), foreground_argv=("x",))
    with pytest.raises(BackendError, match="exited 3"):
        engines.start(dead)


def test_missing_programs_name_their_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert ProcessEngines(systemd=False).missing(["keepalived", "conntrackd"]) == {
        "keepalived": "keepalived", "conntrackd": "conntrackd"}


def test_systemd_runs_the_foreground_command_as_a_transient_unit(engine):
    calls = []

    def run(argv, **kwargs):
        calls.append(argv)
        import subprocess
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    engines = ProcessEngines(systemd=True, run=run, clock=iter(range(1000)).__next__, sleep=lambda s: None)
    with pytest.raises(BackendError, match="did not stay running"):   # nothing really started
        engines.start(engine)
    assert calls[0] == ["systemctl", "reset-failed", "pask-toyd"]
    assert calls[1] == ["systemd-run", "--unit", "pask-toyd", "--collect", "--property",
                        "Restart=on-failure", "--", *engine.foreground_argv]


def test_files_are_written_whole_with_their_mode(tmp_path):
    path = str(tmp_path / "d" / "notify.sh")
    write_file(EngineFile(path, "#!/bin/sh\n", 0o755))
    assert read_file(path) == EngineFile(path, "#!/bin/sh\n", 0o755)
    assert read_file(str(tmp_path / "none")) == EngineFile(str(tmp_path / "none"), "", 0)


def test_the_process_table_has_this_process():
    table = processes()
    assert table[os.getpid()][0] == os.getppid()
    assert table[os.getpid()][1][0].endswith(("python", "python3")) or "python" in table[os.getpid()][1][0]
