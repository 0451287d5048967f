"""The kernel digest: is the kernel still exactly what the last verified apply left?

A run that leaves the kernel verified equal to the config records the digest
``kernel_digest`` makes of what it read (state file, with a digest of the
run's inputs). The next run with the same inputs reads ``kernel_digest_now``, the
cheap way (IPVS dest dumps only scanned, no dest decoded, no YAML parsed): equal
digests mean the plan would be empty. Imports nothing but the value types, so
the no-op fast path stays small.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Iterable

from ..objects import IpvsObserved, Observed

if TYPE_CHECKING:
    from ..backend.base import Backends


def kernel_digest(observed: Observed) -> str | None:
    """One digest of everything a plan is made from: each IPVS service with its dests
    (counters left out), the nft table's listing, the VIP link and addresses, the
    sysctls read. Equal digests, same inputs: the same (empty) plan. None when the
    IPVS read could not be digested."""
    fps = observed.ipvs.service_digests
    if fps is None:
        return None
    h = hashlib.blake2b(digest_size=32)
    for key, fp in sorted((repr(k), v) for k, v in fps.items()):
        h.update(key.encode())
        h.update(fp)
    nft = observed.nft
    h.update(repr((nft.comment, nft.listing_digest) if nft else None).encode())
    h.update(repr(observed.link).encode())
    h.update(repr(sorted(observed.vips)).encode())
    h.update(repr(sorted(observed.sysctls.items())).encode())
    if observed.modules:      # only configs with helpers: every other digest stays as it was
        h.update(repr(sorted(observed.modules.items())).encode())
    return h.hexdigest()


def kernel_digest_now(backends: "Backends", vip_interface: str | None,
                    sysctl_keys: Iterable[str], modules: Iterable[str] = ()) -> str | None:
    """kernel_digest of the kernel as it is now, read the cheap way (no dest is decoded)."""
    fps = backends.ipvs.service_digests()
    if fps is None:
        return None
    link, vips = backends.addr.observe(vip_interface) if vip_interface else (None, frozenset())
    return kernel_digest(Observed(
        ipvs=IpvsObserved(service_digests=fps), nft=backends.nft.observe(), link=link, vips=vips,
        sysctls=backends.sysctl.read(list(sysctl_keys)),
        modules=backends.modules.observe(modules) if modules and backends.modules else {}))
