"""The probe jobs of a config: one per real server whose service has a health check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..health_file import health_key
from ..model import Health, Service
from .probes import Target


@dataclass(frozen=True)
class Check:
    """One probe job: a real server of a service and the health check that applies to it."""

    service: str
    key: str                   # health_key(service, addr, port)
    server: str                # "addr:port" of the real server, for logs
    target: Target
    health: Health
    port: int = 0              # the real server's port (the target's may be the health port)


def checks_of(services: Iterable[Service]) -> dict[str, Check]:
    """Every real server of these services that has a health check (type none: not probed)."""
    out: dict[str, Check] = {}
    for svc in services:
        if svc.health.type == "none":
            continue
        for rs in svc.real_servers:
            key = health_key(svc.name, rs.address, rs.port)
            out[key] = Check(svc.name, key, str(Target(rs.address, rs.port)),
                             Target(rs.address, svc.health.port or rs.port, svc.name), svc.health,
                             rs.port)
    return out
