"""The HA engines (keepalived, conntrackd) as processes: write their rendered files, start
them, make them re-read their files, stop them.

A process is found by its command line (the engine's argv, which names its own config
file), so two nodes' engines on one machine (the lab's namespaces) are told apart, and
a daemon that forked is found as well as one systemd runs in the foreground. Where
systemd is PID 1 and pask runs in PID 1's network namespace, an engine runs as a
transient unit (``systemd-run``, restarted on failure); elsewhere (a container, a lab
namespace) pask-apply starts it itself, in its own network namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Callable, Iterable

from ..atomic_file import write_atomic
from ..objects import Engine, EngineFile, EngineObserved
from .base import BackendError

# engine -> the Debian package that has its program
PACKAGES = {"keepalived": "keepalived", "conntrackd": "conntrackd", "conntrack": "conntrack",
            "bird": "bird2"}
START_TIMEOUT_S = 60.0          # the test VM runs ~10x slower than hardware
STOP_TIMEOUT_S = 30.0
UNIT_PREFIX = "pask-"


def read_file(path: str) -> EngineFile:
    """A file as it is on disk ("" and mode 0 when it is not there)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            content = f.read()
        return EngineFile(path, content, os.stat(path).st_mode & 0o7777)
    except OSError:
        return EngineFile(path, "", 0)


def write_file(spec: EngineFile) -> None:
    """Whole or not at all, with the engine's mode (keepalived refuses a notify script that
    others may write)."""
    write_atomic(spec.path, spec.content.encode("utf-8"), mode=spec.mode)


def processes(proc: str = "/proc") -> dict[int, tuple[int, tuple[str, ...]]]:
    """pid -> (parent pid, argv) of every process."""
    out: dict[int, tuple[int, tuple[str, ...]]] = {}
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/cmdline", "rb") as f:
                raw = f.read()
            with open(f"{proc}/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue                        # gone meanwhile
        if not raw:
            continue                        # a kernel thread or a zombie
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        argv = tuple(a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0"))
        out[int(name)] = (ppid, argv)
    return out


def _same_program(argv: tuple[str, ...], want: tuple[str, ...]) -> bool:
    return len(argv) == len(want) and os.path.basename(argv[0]) == os.path.basename(want[0]) \
        and argv[1:] == want[1:]


class ProcessEngines:
    """EngineBackend on this machine. ``systemd``: run engines as transient units (None:
    when systemd is PID 1 and this is its network namespace)."""

    def __init__(self, *, systemd: bool | None = None, proc: str = "/proc",
                 run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.proc = proc
        self.systemd = _systemd_here(proc) if systemd is None else systemd
        self._run, self._clock, self._sleep = run, clock, sleep

    def pids(self, engine: Engine) -> list[int]:
        """The engine's processes, the first one the main process (its parent is not one)."""
        table = processes(self.proc)
        mine = {pid for pid, (_, argv) in table.items()
                if _same_program(argv, engine.argv) or _same_program(argv, engine.foreground_argv)}
        return sorted(mine, key=lambda pid: (table[pid][0] in mine, pid))

    def observe(self, engines: Iterable[Engine]) -> dict[str, EngineObserved]:
        return {e.name: EngineObserved(e.name, bool(self.pids(e)),
                                       tuple(read_file(f.path) for f in e.files))
                for e in engines}

    def start(self, engine: Engine) -> None:
        if self.pids(engine):
            raise BackendError(f"start {engine.name}: it is already running")
        for path in engine.stale:          # a killed conntrackd leaves its lock: it would not start
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        for spec in engine.files:
            write_file(spec)
        if self.systemd:
            unit = UNIT_PREFIX + engine.name
            self._run(["systemctl", "reset-failed", unit], capture_output=True)
            argv = ["systemd-run", "--unit", unit, "--collect", "--property", "Restart=on-failure",
                    "--", *engine.foreground_argv]
        else:
            argv = list(engine.argv)
        # stderr to a file, not a pipe: the daemon it forks keeps the inherited descriptor,
        # and a pipe would stay open (and run() waiting) for as long as the daemon lives
        import tempfile       # here: every pask-apply makes this backend, few start a daemon

        with tempfile.TemporaryFile() as log:
            try:
                done = self._run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=log, start_new_session=True, timeout=START_TIMEOUT_S)
            except (OSError, subprocess.SubprocessError) as e:
                raise BackendError(f"start {engine.name}: {' '.join(argv)}: {e}") from None
            log.seek(0)
            stderr = log.read(4096)
        if done.returncode != 0:
            err = stderr.decode(errors="replace").strip()
            raise BackendError(f"start {engine.name}: {' '.join(argv)} exited {done.returncode}"
                               + (f": {err}" if err else ""))
        self._wait(engine, running=True, timeout=START_TIMEOUT_S,
                   what=f"{engine.name} did not stay running (see its log in syslog/journal; "
                        f"check: {' '.join(engine.foreground_argv)})")

    def reload(self, engine: Engine) -> None:
        pids = self.pids(engine)
        if engine.reload == "restart" or not pids:
            if pids:
                self.stop(engine)
            self.start(engine)
            return
        for spec in engine.files:
            write_file(spec)
        try:
            os.kill(pids[0], signal.SIGHUP)
        except ProcessLookupError:
            self.start(engine)

    def stop(self, engine: Engine) -> None:
        if self.systemd:
            self._run(["systemctl", "stop", UNIT_PREFIX + engine.name], capture_output=True)
        for pid in self.pids(engine):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self._wait(engine, running=False, timeout=STOP_TIMEOUT_S, what="")
        except BackendError:
            for pid in self.pids(engine):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def missing(self, names: Iterable[str]) -> dict[str, str]:
        import shutil

        return {n: PACKAGES.get(n, n) for n in names if shutil.which(n) is None}

    def _wait(self, engine: Engine, *, running: bool, timeout: float, what: str) -> None:
        deadline = self._clock() + timeout
        while bool(self.pids(engine)) != running:
            if self._clock() > deadline:
                raise BackendError(what or f"{engine.name} did not stop")
            self._sleep(0.1)


def _systemd_here(proc: str) -> bool:
    """systemd is PID 1 and this process shares its network namespace (a unit it starts
    would run where pask-apply runs)."""
    try:
        return os.path.isdir("/run/systemd/system") and \
            os.stat(f"{proc}/self/ns/net").st_ino == os.stat(f"{proc}/1/ns/net").st_ino
    except OSError:
        return False
