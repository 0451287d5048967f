"""The real kernel backends, assembled (imports stay lazy inside each)."""

from __future__ import annotations

from .base import Backends


def real_backends() -> Backends:
    from .addr import IPRouteAddr
    from .engines import ProcessEngines
    from .ipvs import IpvsNetlink
    from .modules import LinuxModules
    from .nft import NftLib
    from .sysctl import ProcSysctl

    return Backends(ipvs=IpvsNetlink(), nft=NftLib(), addr=IPRouteAddr(), sysctl=ProcSysctl(),
                    modules=LinuxModules(), engines=ProcessEngines())
