"""All fakes together: a whole in-memory kernel for unit tests and --offline planning."""

from __future__ import annotations

from .base import Backends
from .fake_engines import FakeEngines
from .fake_host import FakeAddr, FakeModules, FakeSysctl
from .fake_ipvs import FakeIpvs
from .fake_nft import FakeNft


def fake_backends(**ipvs_options) -> Backends:
    return Backends(ipvs=FakeIpvs(**ipvs_options), nft=FakeNft(), addr=FakeAddr(), sysctl=FakeSysctl(),
                    modules=FakeModules(), engines=FakeEngines())


def kernel_writes(b: Backends) -> int:
    """Objects written to the (fake) kernel so far: the no-op apply must add none."""
    return (b.ipvs.writes + b.nft.replace_count + b.addr.writes + b.sysctl.writes
            + (b.modules.writes if b.modules is not None else 0)
            + (b.engines.writes if b.engines is not None else 0))
