"""Fakes for addresses and sysctls that behave like the kernel (errno and all)."""

from __future__ import annotations

import errno
from typing import Iterable

from ..objects import LinkObserved, VipAddress
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
