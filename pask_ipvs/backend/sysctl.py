"""Sysctls through /proc/sys (no library needed: it is one file per key)."""

from __future__ import annotations

import os
from typing import Iterable

from .base import BackendError


class ProcSysctl:
    def __init__(self, root: str = "/proc/sys"):
        self.root = root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("."))

    def read(self, keys: Iterable[str]) -> dict[str, str]:
        out = {}
        for key in keys:
            try:
                with open(self._path(key), encoding="ascii") as f:
                    out[key] = f.read().strip()
            except FileNotFoundError:
                continue
        return out

    def write(self, key: str, value: str) -> None:
        try:
            with open(self._path(key), "w", encoding="ascii") as f:
                f.write(f"{value}\n")
        except OSError as e:
            raise BackendError(f"sysctl {key}={value}: {e.strerror}", e.errno or 0) from e
