"""The kernel side of `pask realserver`: links, IPv4 and IPv6 addresses, sysctls, modprobe.

``LinuxRealServerHost`` is the real one (pyroute2 for links and addresses,
/proc/sys for sysctls, ``modprobe`` for ipip / ip6_tunnel); ``FakeRealServerHost``
behaves like the kernel for unit tests (EEXIST / EADDRNOTAVAIL / ENODEV, ipip
creating tunl0 and ip6_tunnel ip6tnl0, EACCES when not root, EACCES for an IPv6
address where IPv6 is disabled).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
from typing import Iterable

from ..objects import VipAddress
from ..objects import TUNNEL, TUNNEL6, TUNNEL6_MODULE, TUNNEL_MODULE, HostObserved, family_of
from .base import BackendError
from .sysctl import ProcSysctl

_IFF_UP = 0x1


def _code(e: Exception) -> int:
    return getattr(e, "code", 0) or getattr(e, "errno", 0) or 0


class LinuxRealServerHost:
    """The running kernel. pyroute2 is imported on first use (seconds under emulation)."""

    def __init__(self, sysctl_root: str = "/proc/sys"):
        self._ipr = None
        self._sysctl = ProcSysctl(sysctl_root)

    @property
    def ipr(self):
        if self._ipr is None:
            from pyroute2 import IPRoute
            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def observe(self, sysctl_keys: Iterable[str]) -> HostObserved:
        try:
            names: dict[int, str] = {}
            links: dict[str, bool] = {}
            for link in self.ipr.get_links():
                name = link.get_attr("IFLA_IFNAME")
                names[link["index"]] = name
                links[name] = bool(link["flags"] & _IFF_UP)
            addresses = frozenset(
                VipAddress(names.get(a["index"], str(a["index"])),
                           a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                for family in (socket.AF_INET, socket.AF_INET6)
                for a in self.ipr.get_addr(family=family))
        except Exception as e:  # NetlinkError / OSError
            raise BackendError(f"rtnetlink dump: {e}", _code(e)) from e
        return HostObserved(links, addresses, self._sysctl.read(sysctl_keys))

    def can_change(self) -> bool:
        return os.geteuid() == 0

    def load_module(self, name: str) -> None:
        modprobe = shutil.which("modprobe") or next(
            (p for p in ("/usr/sbin/modprobe", "/sbin/modprobe") if os.path.exists(p)), None)
        if modprobe is None:
            raise BackendError(f"cannot load {name}: modprobe not found (install kmod)", errno.ENOENT)
        done = subprocess.run([modprobe, name], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
            raise BackendError(f"modprobe {name}: {why}", errno.ENOENT)

    def _index(self, name: str) -> int:
        found = self.ipr.link_lookup(ifname=name)
        if not found:
            raise BackendError(f"interface {name} does not exist", errno.ENODEV)
        return found[0]

    def set_link_up(self, name: str) -> None:
        idx = self._index(name)
        try:
            self.ipr.link("set", index=idx, state="up")
        except Exception as e:
            raise BackendError(f"set {name} up: {e}", _code(e)) from e

    def add_address(self, vip: VipAddress) -> None:
        self._addr("add", vip)

    def delete_address(self, vip: VipAddress) -> None:
        self._addr("del", vip)

    def _addr(self, cmd: str, vip: VipAddress) -> None:
        idx = self._index(vip.interface)
        try:
            self.ipr.addr(cmd, index=idx, address=vip.addr, prefixlen=vip.prefixlen)
        except Exception as e:
            raise BackendError(f"{cmd} address {vip}: {e}", _code(e)) from e

    def write_sysctl(self, key: str, value: str) -> None:
        self._sysctl.write(key, value)


class FakeRealServerHost:
    """A real server's kernel in memory, as a fresh network namespace starts out.

    ``lo`` exists and is down; ARP and rp_filter sysctls have the kernel's
    defaults; ``ipip_available=False`` (``ip6_tunnel_available=False``) makes
    modprobe fail as on a kernel without the module; ``root=False`` makes every
    change fail with EACCES; ``ipv6_disabled`` names links with
    ``net.ipv6.conf.<link>.disable_ipv6=1``, where adding an IPv6 address fails
    with EACCES as in the kernel.
    """

    SYSCTL_DEFAULTS = {
        "net.ipv4.conf.all.arp_ignore": "0", "net.ipv4.conf.all.arp_announce": "0",
        "net.ipv4.conf.lo.arp_ignore": "0", "net.ipv4.conf.lo.arp_announce": "0",
        "net.ipv4.conf.all.rp_filter": "2", "net.ipv4.conf.default.rp_filter": "2",
        "net.ipv4.conf.lo.rp_filter": "2",
    }

    def __init__(self, *, root: bool = True, ipip_available: bool = True,
                 ipip_loaded: bool = False, tunnel_in_netns: bool = True,
                 ip6_tunnel_available: bool = True, ip6_tunnel_loaded: bool = False,
                 ipv6_disabled: Iterable[str] = ()):
        self.root = root
        self.ipip_available = ipip_available
        self.ip6_tunnel_available = ip6_tunnel_available
        self.ipv6_disabled = set(ipv6_disabled)
        self.tunnel_in_netns = tunnel_in_netns   # False: net.core.fb_tunnels_only_for_init_net
        self.modules: set[str] = set()
        self.links: dict[str, bool] = {"lo": False}
        self.addresses: set[VipAddress] = set()
        self.sysctls: dict[str, str] = dict(self.SYSCTL_DEFAULTS)
        self.changes: list[str] = []   # every successful change, in order
        if ipip_loaded:
            self._load_ipip()
        if ip6_tunnel_loaded:
            self._load_ip6_tunnel()

    def observe(self, sysctl_keys: Iterable[str]) -> HostObserved:
        return HostObserved(dict(self.links), frozenset(self.addresses),
                            {k: self.sysctls[k] for k in sysctl_keys if k in self.sysctls})

    def can_change(self) -> bool:
        return self.root

    def _need_root(self, what: str) -> None:
        if not self.root:
            raise BackendError(f"{what}: Permission denied", errno.EACCES)

    def load_module(self, name: str) -> None:
        self._need_root(f"modprobe {name}")
        available = {TUNNEL_MODULE: self.ipip_available, TUNNEL6_MODULE: self.ip6_tunnel_available}
        if not available.get(name):
            raise BackendError(f"modprobe {name}: FATAL: Module {name} not found in directory "
                               "/lib/modules/6.1.0-fake", errno.ENOENT)
        if name not in self.modules:
            (self._load_ipip if name == TUNNEL_MODULE else self._load_ip6_tunnel)()
            self.changes.append(f"modprobe {name}")

    def _load_ip6_tunnel(self) -> None:
        """ip6_tunnel creates ip6tnl0 (down) in every namespace; IPv6 has no rp_filter."""
        self.modules.add(TUNNEL6_MODULE)
        if self.tunnel_in_netns:
            self.links[TUNNEL6] = False

    def _load_ipip(self) -> None:
        self.modules.add(TUNNEL_MODULE)
        if self.tunnel_in_netns:
            self.links[TUNNEL] = False
            for leaf in ("arp_ignore", "arp_announce"):
                self.sysctls[f"net.ipv4.conf.{TUNNEL}.{leaf}"] = "0"
            self.sysctls[f"net.ipv4.conf.{TUNNEL}.rp_filter"] = self.sysctls[
                "net.ipv4.conf.default.rp_filter"]

    def set_link_up(self, name: str) -> None:
        self._need_root(f"set {name} up")
        if name not in self.links:
            raise BackendError(f"interface {name} does not exist", errno.ENODEV)
        self.links[name] = True
        self.changes.append(f"link {name} up")

    def add_address(self, vip: VipAddress) -> None:
        self._need_root(f"add address {vip}")
        if vip.interface not in self.links:
            raise BackendError(f"interface {vip.interface} does not exist", errno.ENODEV)
        if vip in self.addresses:
            raise BackendError(f"add address {vip}: File exists", errno.EEXIST)
        if family_of(vip.addr) == 6 and vip.interface in self.ipv6_disabled:
            raise BackendError(f"add address {vip}: Permission denied", errno.EACCES)
        self.addresses.add(vip)
        self.changes.append(f"add {vip}")

    def delete_address(self, vip: VipAddress) -> None:
        self._need_root(f"del address {vip}")
        if vip not in self.addresses:
            raise BackendError(f"del address {vip}: Cannot assign requested address",
                               errno.EADDRNOTAVAIL)
        self.addresses.remove(vip)
        self.changes.append(f"del {vip}")

    def write_sysctl(self, key: str, value: str) -> None:
        self._need_root(f"sysctl {key}={value}")
        if key not in self.sysctls:
            raise BackendError(f"sysctl {key}={value}: No such file or directory", errno.ENOENT)
        self.sysctls[key] = value
        self.changes.append(f"sysctl {key}={value}")
