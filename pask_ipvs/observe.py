"""observe: read what the kernel holds of everything the desired state speaks about."""

from __future__ import annotations

from typing import Iterable, Mapping

from .backend.base import Backends
from .objects import DestKey, Desired, IpvsDest, IpvsObserved, Observed, ServiceKey
from .plan import IPVS_KINDS, Op

# after an apply, IPVS is re-read only for the services the apply touched, unless they are
# more than this share of the table (a cold apply, a big change): then one whole-table read
# is cheaper.
VERIFY_PARTIAL_MAX_FRACTION = 0.25


def observe(desired: Desired, backends: Backends, *, stats: bool = False) -> Observed:
    """Read what the kernel holds of everything ``desired`` speaks about.

    IPVS is read first: the generic-netlink lookup loads ip_vs, which creates
    the net.ipv4.vs.* sysctls read after it.
    """
    return _observe_rest(desired, backends, backends.ipvs.observe(stats=stats))


def observe_to_plan(desired: Desired, backends: Backends, *, stats: bool = False,
                    also: Iterable[ServiceKey] = ()) -> Observed:
    """What ``observe`` reads, with IPVS read by digests (observe_ipvs_by_digests): the
    services the kernel holds exactly as ``desired`` says are not decoded, every other
    one is (changed in the config, drifted, foreign, no longer pask's, and those
    ``also`` names: draining). The plan made from it is observe()'s plan: a service
    left undecoded gives no op either way, and every one that may give an op (or whose
    counters a drain needs) is decoded. Whole (observe) when the backend cannot make
    the digests."""
    ipvs = observe_ipvs_by_digests(desired, backends, stats=stats, also=also)
    if ipvs is None:
        ipvs = backends.ipvs.observe(stats=stats)
    return _observe_rest(desired, backends, ipvs)


def _observe_rest(desired: Desired, backends: Backends, ipvs: IpvsObserved) -> Observed:
    """Everything but IPVS (cheap: one nft listing, one interface, a few sysctls)."""
    nft = backends.nft.observe()
    link, vips = (None, frozenset())
    if desired.vip_interface:
        link, vips = backends.addr.observe(desired.vip_interface)
    else:   # VIPs are kept elsewhere: only the interfaces of those pask once added
        for interface in sorted({v.interface for v in desired.retired_vips}):
            vips |= backends.addr.observe(interface)[1]
    sysctls = backends.sysctl.read(desired.sysctls.keys())
    modules = backends.modules.observe(desired.modules) if desired.modules and backends.modules else {}
    sync = frozenset()
    if desired.sync_daemons or desired.retired_sync:
        sync = backends.ipvs.observe_sync_daemons()
    engines = {}
    wanted = [*desired.engines.values(),
              *(e for n, e in desired.retired_engines.items() if n not in desired.engines)]
    if wanted and backends.engines is not None:
        engines = backends.engines.observe(wanted)
    return Observed(ipvs=ipvs, nft=nft, link=link, vips=vips, sysctls=sysctls, modules=modules,
                    sync_daemons=sync, engines=engines)


def touched_services(ops: Iterable[Op]) -> set[ServiceKey]:
    """The IPVS services ``ops`` write to: a service op's own key, a dest op's service."""
    keys: set[ServiceKey] = set()
    for op in ops:
        if op.kind not in IPVS_KINDS:
            continue
        value = op.after if op.after is not None else op.before
        keys.add(value.key if op.kind == "service" else value.service)   # type: ignore[union-attr]
    return keys


def observe_after(desired: Desired, backends: Backends, before: Observed, ops: Iterable[Op], *,
                  stats: bool = False, also: Iterable[ServiceKey] = (),
                  touched: Iterable[ServiceKey] = (),
                  max_fraction: float = VERIFY_PARTIAL_MAX_FRACTION) -> Observed:
    """What ``observe`` would read after ``ops`` ran on a kernel observed as ``before``,
    at the cost of what the ops touched.

    IPVS: ``before`` with the services the ops touched (and ``also``) read again
    through ``observe_services``; a service gone from the kernel drops out with its
    dests. When those are more than ``max_fraction`` of the services in ``before``
    (a cold apply), the whole table is read instead: by digests where the backend
    can (observe_ipvs_by_digests), else decoded whole. Everything
    else is read whole, as ``observe`` does. Same result as ``observe`` as long as
    nobody else changed the untouched services meanwhile (their counters are
    ``before``'s; ``also`` names the services whose counters matter, e.g. draining).
    ``touched``: services the ops wrote to, given instead of (or besides) the ops."""
    keys = touched_services(ops) | set(touched) | set(also)
    if len(keys) > max_fraction * len(before.ipvs.services):
        ipvs = observe_ipvs_by_digests(desired, backends, stats=stats, also=also)
        if ipvs is None:
            ipvs = backends.ipvs.observe(stats=stats)
    elif keys:
        fresh = backends.ipvs.observe_services(sorted(keys), stats=stats)
        ipvs = before.ipvs.replaced(fresh, keys)
    else:                       # only nft, addresses or sysctls changed: IPVS is as it was
        ipvs = before.ipvs.replaced(IpvsObserved(), keys)
    return _observe_rest(desired, backends, ipvs)


def observe_ipvs_by_digests(desired: Desired, backends: Backends, *, stats: bool = False,
                            also: Iterable[ServiceKey] = ()) -> IpvsObserved | None:
    """The whole IPVS table as ``backends.ipvs.observe`` reads it, at the cost of digests:
    the kernel's digest of each service (service_digests: no dest decoded) is compared with
    the digest of the desired service and dests (expected_digests: encoded as the kernel
    reports them, listed as the kernel lists dests a plan added: newest first). A service
    whose digests are equal holds exactly what ``desired`` says, in that order, so its
    objects are ``desired``'s own; every other service of the kernel (changed, reordered,
    foreign, not pask's any more) and those ``also`` names are read and decoded
    (observe_services). The services and dests, and each service's dest order, equal
    observe()'s; the counters are read for the decoded services only (a diff needs those
    of dests it may delete, and drain). None when the backend cannot make either digest:
    the caller reads whole."""
    ipvs = backends.ipvs
    have = ipvs.service_digests()
    if have is None:
        return None
    if not have:           # an empty table (a cold apply): nothing to compare, or to encode
        return IpvsObserved()
    services = desired.services
    both = {key: services[key] for key in have if key in services}
    added = _dests_as_added(desired, both)
    want = ipvs.expected_digests(both, [d for dests in added.values() for _, d in dests])
    if want is None:
        return None
    also = set(also)
    decode = [key for key, digest in have.items() if key in also or want.get(key) != digest]
    fresh = ipvs.observe_services(decode, stats=stats) if decode else IpvsObserved()
    decoded = set(decode)
    out = IpvsObserved(service_stats=fresh.service_stats, dest_stats=fresh.dest_stats)
    digests: dict[ServiceKey, bytes] | None = {}
    for key, digest in have.items():          # the kernel's order, as observe() gives it
        if key not in decoded:
            out.services[key] = desired.services[key]
            out.dests.update(reversed(added.get(key, ())))     # the kernel's: newest first
            digests[key] = digest
        elif key in fresh.services:            # else: gone since the digests were read
            out.services[key] = fresh.services[key]
    out.dests.update(fresh.dests)
    if fresh.service_digests is None:
        digests = None
    else:
        digests.update(fresh.service_digests)
        digests = {key: digests[key] for key in out.services if key in digests}
    out.service_digests = digests
    return out


def _dests_as_added(desired: Desired, services: Mapping[ServiceKey, object]
                    ) -> dict[ServiceKey, list[tuple[DestKey, IpvsDest]]]:
    """The dests of each of ``services`` (desired ones) in the order a plan adds them
    (diff: the config's order; bgp's mh services: their canonical order,
    plan.canonical_dest_ops)."""
    out: dict[ServiceKey, list[tuple[DestKey, IpvsDest]]] = {}
    for dkey, dest in desired.dests.items():
        if dkey.service in services:
            out.setdefault(dkey.service, []).append((dkey, dest))
    for key, table in desired.canonical_dests.items():
        if key in out:
            out[key] = [(dkey, desired.dests[dkey]) for dkey, _ in table]
    return out
