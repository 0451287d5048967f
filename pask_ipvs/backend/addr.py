"""VIP addresses on pask's dummy interface, through iproute2's ``ip``."""

from __future__ import annotations

import errno
import json
import subprocess

from ..objects import LinkObserved, VipAddress
from .base import BackendError


def _ip_json(*args: str) -> list[dict]:
    """``ip -j ARGS``; a missing device is an empty answer, anything else an error."""
    try:
        proc = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError as e:
        raise BackendError("the ip command (iproute2) is not installed", errno.ENOENT) from e
    if proc.returncode != 0:
        if "does not exist" in proc.stderr:
            return []
        raise BackendError(f"ip {' '.join(args)}: {proc.stderr.strip()}", errno.EIO)
    return json.loads(proc.stdout or "[]")


class IPRouteAddr:
    """Addresses and pask's dummy link through iproute2 (``ip -j`` to read, ``ip -batch``
    to write): one process per run instead of pyroute2, whose import alone costs
    over a second under emulation (docs/performance.md)."""

    def observe(self, interface: str) -> tuple[LinkObserved | None, frozenset[VipAddress]]:
        """Read through iproute2's JSON output: importing pyroute2 costs seconds under
        emulation, and a no-op apply should not pay it just to look."""
        shown = _ip_json("-d", "addr", "show", "dev", interface)
        if not shown:
            return None, frozenset()
        link = shown[0]
        kind = (link.get("linkinfo") or {}).get("info_kind", "")
        up = "UP" in link.get("flags", [])
        vips = frozenset(
            VipAddress(interface, a["local"], int(a["prefixlen"]))
            for a in link.get("addr_info", [])
            if a.get("local") and not a["local"].startswith("fe80:")
        )
        return LinkObserved(interface, kind, up), vips

    def add_link(self, name: str) -> None:
        """``ip link add NAME type dummy`` then set it up; an existing link is only set up."""
        script = f"link add {name} type dummy\nlink set {name} up\n"
        proc = _ip_batch(script)
        if proc.returncode == 0:
            return
        failed, reason = _batch_failures(proc.stderr), ""
        for n, why in failed:
            if n == 1 and "File exists" in why:
                continue                      # already there (maybe not dummy: observe tells)
            reason = why or "failed"
            hint = (" (is the dummy module available?)"
                    if n == 1 and ("Unknown device type" in why or "not supported" in why) else "")
            raise BackendError(f"create dummy interface {name}: {reason}{hint}",
                               errno.EOPNOTSUPP if hint else errno.EIO)
        if not failed:
            raise BackendError(f"create dummy interface {name}: {proc.stderr.strip()}", errno.EIO)

    def apply(self, ops) -> list[BackendError]:
        """All address ops through one ``ip -force -batch -``: one process instead of a
        netlink round trip per VIP (10 s for 1024 VIPs in the VM)."""
        lines = []
        for op in ops:
            vip = op.before if op.action == "delete" else op.after
            verb = "del" if op.action == "delete" else "replace"   # replace: add, EEXIST-safe
            lines.append(f"address {verb} {vip.addr}/{vip.prefixlen} dev {vip.interface}\n")
        proc = _ip_batch("".join(lines))
        if proc.returncode == 0:
            return []
        failed = _batch_failures(proc.stderr)
        if not failed:
            return [BackendError(f"ip -batch: {proc.stderr.strip()}", errno.EIO, ops[0])]
        errors = []
        for n, reason in failed:
            op = ops[n - 1]
            gone = op.action == "delete" and ("Address not found" in reason
                                              or "Cannot assign" in reason)
            if not gone:
                errors.append(BackendError(f"{lines[n - 1].strip()}: {reason or 'failed'}",
                                           errno.EIO, op))
        return errors


def _ip_batch(script: str) -> subprocess.CompletedProcess:
    """``ip -force -batch -``: every line is tried, failures are reported by line number."""
    try:
        return subprocess.run(["ip", "-force", "-batch", "-"], input=script,
                              capture_output=True, text=True, timeout=300)
    except FileNotFoundError as e:
        raise BackendError("the ip command (iproute2) is not installed", errno.ENOENT) from e


def _batch_failures(stderr: str) -> list[tuple[int, str]]:
    """[(line number, reason)] from ``ip -batch``'s stderr: a reason line, then
    'Command failed -:N'."""
    failed, reason = [], ""
    for line in stderr.splitlines():
        if line.startswith("Command failed -:"):
            failed.append((int(line.rsplit(":", 1)[1]), reason))
            reason = ""
        elif line.strip():
            reason = line.strip()
    return failed
