"""EngineBackend in memory: files on a fake disk, daemons that run or not, and the
actions taken, for unit tests and --offline planning."""

from __future__ import annotations

from typing import Iterable

from ..objects import Engine, EngineFile, EngineObserved
from .base import BackendError
from .engines import PACKAGES


class FakeEngines:
    def __init__(self, *, installed: Iterable[str] = tuple(PACKAGES)):
        self.installed = set(installed)
        self.files: dict[str, EngineFile] = {}       # path -> as written
        self.running: dict[str, Engine] = {}         # name -> the engine as started / reloaded
        self.loaded: dict[str, str] = {}             # name -> digest of the config it read
        self.actions: list[tuple[str, str]] = []     # (action, engine name), in order
        self.writes = 0
        self.fail_start: set[str] = set()            # engines whose start fails (a bad config)

    def observe(self, engines: Iterable[Engine]) -> dict[str, EngineObserved]:
        return {e.name: EngineObserved(e.name, e.name in self.running,
                                       tuple(self.files.get(f.path, EngineFile(f.path, "", 0))
                                             for f in e.files))
                for e in engines}

    def start(self, engine: Engine) -> None:
        if engine.name in self.running:
            raise BackendError(f"start {engine.name}: it is already running")
        if engine.name not in self.installed:
            raise BackendError(f"start {engine.name}: No such file or directory")
        self._write(engine)
        if engine.name in self.fail_start:
            raise BackendError(f"{engine.name} did not stay running")
        self.running[engine.name] = engine
        self.loaded[engine.name] = engine.digest()
        self.actions.append(("start", engine.name))

    def reload(self, engine: Engine) -> None:
        if engine.name not in self.running:
            self.start(engine)
            return
        self._write(engine)
        self.running[engine.name] = engine
        self.loaded[engine.name] = engine.digest()
        self.actions.append(("restart" if engine.reload == "restart" else "reload", engine.name))

    def stop(self, engine: Engine) -> None:
        self.running.pop(engine.name, None)
        self.actions.append(("stop", engine.name))
        self.writes += 1

    def missing(self, names: Iterable[str]) -> dict[str, str]:
        return {n: PACKAGES.get(n, n) for n in names if n not in self.installed}

    # test helpers
    def kill(self, name: str) -> None:
        """The daemon died (kill -9): its files stay."""
        self.running.pop(name, None)

    def _write(self, engine: Engine) -> None:
        for spec in engine.files:
            self.files[spec.path] = spec
        self.writes += 1
