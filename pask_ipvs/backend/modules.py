"""Kernel modules: which are loaded with which parameters, which this kernel has, modprobe.

Helpers such as ip_vs_ftp read their parameters once, at load (``ports``), and
/sys/module/NAME/parameters shows what the loaded one got. A kernel without a
module is found out before any change, from modules.builtin and modules.dep.
"""

from __future__ import annotations

import errno
import os
import subprocess
from typing import Iterable

from ..objects import KernelModule
from .base import BackendError

MODPROBE_TIMEOUT_S = 120


def kernel_module_names(modules_dir: str) -> set[str]:
    """Module names this kernel has built in or can load (modules.builtin, modules.dep;
    an unreadable index: none), spelled with '_' as /sys/module spells them."""
    names: set[str] = set()
    for index in ("modules.builtin", "modules.dep"):
        try:
            with open(os.path.join(modules_dir, index), encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    base = os.path.basename(line.split(":", 1)[0].strip())
                    if ".ko" in base:
                        names.add(base.split(".ko", 1)[0].replace("-", "_"))
        except OSError:
            continue
    return names


def _modprobe_path() -> str | None:
    import shutil        # here: only a config that needs a module runs modprobe

    return shutil.which("modprobe") or next(
        (p for p in ("/usr/sbin/modprobe", "/sbin/modprobe") if os.path.exists(p)), None)


class LinuxModules:
    """ModuleBackend on the kernel: /sys/module to read, modprobe to load."""

    def __init__(self, sys_module_dir: str = "/sys/module", modules_dir: str | None = None):
        self.sys_module_dir = sys_module_dir
        self.modules_dir = modules_dir or f"/lib/modules/{os.uname().release}"

    def observe(self, names: Iterable[str]) -> dict[str, KernelModule]:
        out: dict[str, KernelModule] = {}
        for name in names:
            base = os.path.join(self.sys_module_dir, name)
            if not os.path.isdir(base):
                continue
            params: list[tuple[str, str]] = []
            pdir = os.path.join(base, "parameters")
            for key in sorted(os.listdir(pdir)) if os.path.isdir(pdir) else ():
                try:
                    with open(os.path.join(pdir, key), encoding="utf-8") as fh:
                        params.append((key, fh.read().strip()))
                except OSError:        # write-only parameters
                    continue
            out[name] = KernelModule(name, tuple(params))
        return out

    def missing(self, names: Iterable[str]) -> list[str]:
        wanted = [n for n in names if not os.path.isdir(os.path.join(self.sys_module_dir, n))]
        if not wanted:
            return []
        known = kernel_module_names(self.modules_dir)
        return [n for n in wanted if n not in known]

    def load(self, module: KernelModule) -> None:
        self._modprobe([module.name, *(f"{k}={v}" for k, v in module.params)], f"load {module}")

    def reload(self, module: KernelModule) -> None:
        self._modprobe(["-r", module.name], f"unload {module.name} to reload it as {module}")
        self.load(module)

    def _modprobe(self, args: list[str], what: str) -> None:
        modprobe = _modprobe_path()
        if modprobe is None:
            raise BackendError(f"cannot {what}: modprobe not found (install kmod)", errno.ENOENT)
        try:
            done = subprocess.run([modprobe, *args], capture_output=True, text=True,
                                  timeout=MODPROBE_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            raise BackendError(f"cannot {what}: {e}", errno.EIO) from None
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip() or f"exit {done.returncode}"
            raise BackendError(f"cannot {what}: modprobe {' '.join(args)}: {why}",
                               errno.EBUSY if "in use" in why else errno.ENOENT)
