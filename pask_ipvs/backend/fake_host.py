"""Fakes for addresses, sysctls and kernel modules that behave like the kernel (errno and all)."""

from __future__ import annotations

import errno
from typing import Iterable

from ..objects import KernelModule, LinkObserved, VipAddress
from .base import BackendError


class FakeAddr:
    def __init__(self, dummy_supported: bool = True):
        self.links: dict[str, LinkObserved] = {}
        self.addrs: set[VipAddress] = set()
        self.dummy_supported = dummy_supported
        self.writes = 0

    def observe(self, interface: str) -> tuple[LinkObserved | None, frozenset[VipAddress]]:
        link = self.links.get(interface)
        return link, frozenset(a for a in self.addrs if a.interface == interface)

    def add_link(self, name: str) -> None:
        if not self.dummy_supported:
            raise BackendError(f"create dummy interface {name}: not supported", errno.EOPNOTSUPP)
        self.writes += 1
        self.links[name] = LinkObserved(name, "dummy", True)

    def apply(self, ops) -> list[BackendError]:
        errors = []
        for op in ops:
            try:
                if op.action == "delete":
                    self.delete_address(op.before)
                else:
                    self.add_address(op.after)
            except BackendError as e:
                e.op = op
                errors.append(e)
        return errors

    def add_address(self, vip: VipAddress) -> None:
        if vip.interface not in self.links:
            raise BackendError(f"interface {vip.interface} does not exist", errno.ENODEV)
        self.writes += 1
        self.addrs.add(vip)

    def delete_address(self, vip: VipAddress) -> None:
        self.writes += 1
        self.addrs.discard(vip)


class FakeSysctl:
    """Starts with the kernel defaults pask cares about (ip_vs loaded)."""

    DEFAULTS = {
        "net.ipv4.ip_forward": "0",
        "net.ipv4.vs.conntrack": "0",
        "net.ipv4.vs.expire_nodest_conn": "0",
        "net.ipv4.vs.sloppy_tcp": "0",
        "net.ipv4.conf.all.accept_local": "0",
        "net.ipv6.conf.all.forwarding": "0",
    }

    def __init__(self, values: dict[str, str] | None = None):
        self.values = dict(self.DEFAULTS if values is None else values)
        self.writes = 0

    def read(self, keys: Iterable[str]) -> dict[str, str]:
        return {k: self.values[k] for k in keys if k in self.values}

    def write(self, key: str, value: str) -> None:
        if key not in self.values:
            raise BackendError(f"sysctl {key}={value}: No such file or directory", errno.ENOENT)
        self.writes += 1
        self.values[key] = str(value)


class FakeModules:
    """Modules as the kernel and modprobe treat them.

    * a module's parameters are set at load: ``modprobe`` of a loaded module
      changes nothing (exit 0), as the real one;
    * a parameter left out gets the module's default (ip_vs_ftp: ports=21);
    * unloading a module in use fails (EBUSY); one this kernel lacks cannot load (ENOENT).
    """

    DEFAULT_PARAMS = {"ip_vs_ftp": (("ports", "21"),)}
    AVAILABLE = frozenset({"ip_vs_ftp", "nf_conntrack_tftp", "nf_nat_tftp", "nf_conntrack_h323",
                           "nf_nat_h323", "nf_conntrack_ftp", "nf_nat_ftp", "ipip"})

    def __init__(self, available: Iterable[str] | None = None,
                 loaded: Iterable[KernelModule] = ()):
        self.available = set(self.AVAILABLE if available is None else available)
        self.loaded: dict[str, KernelModule] = {m.name: m for m in loaded}
        self.in_use: set[str] = set()
        self.writes = 0

    def observe(self, names: Iterable[str]) -> dict[str, KernelModule]:
        return {n: self.loaded[n] for n in names if n in self.loaded}

    def missing(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if n not in self.loaded and n not in self.available]

    def load(self, module: KernelModule) -> None:
        if module.name in self.loaded:
            return
        if module.name not in self.available:
            raise BackendError(f"cannot load {module}: modprobe {module.name}: FATAL: Module "
                               f"{module.name} not found in directory /lib/modules/6.1.0-fake",
                               errno.ENOENT)
        params = dict(self.DEFAULT_PARAMS.get(module.name, ()))
        params.update(module.params)
        self.loaded[module.name] = KernelModule(module.name, tuple(sorted(params.items())))
        self.writes += 1

    def reload(self, module: KernelModule) -> None:
        if module.name in self.in_use:
            raise BackendError(f"cannot unload {module.name} to reload it as {module}: modprobe -r "
                               f"{module.name}: FATAL: Module {module.name} is in use.", errno.EBUSY)
        self.loaded.pop(module.name, None)
        self.writes += 1
        self.load(module)
