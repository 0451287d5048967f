"""The ``bgp:`` block as typed, frozen values (docs/design.md "bgp"), built from
validated data. model.Config carries it; pask_ipvs.bgp decides what it means for the
kernel and the BGP daemon."""

from __future__ import annotations

from dataclasses import dataclass

from .defaults import DEFAULT_BGP_ANNOUNCE, DEFAULT_BGP_HOLD_TIME, DEFAULT_BGP_TAKEOVER
from .objects import canonical_address, family_of


@dataclass(frozen=True)
class BgpNeighbor:
    address: str                    # the router's address on a link shared with this LB
    asn: int                        # the config's ``as`` (a Python keyword)

    @property
    def family(self) -> int:
        return family_of(self.address)


@dataclass(frozen=True)
class Bgp:
    """This LB speaks BGP to its routers and announces each VIP as a host route, so that
    several LBs with the same services share the traffic by ECMP."""
    local_as: int
    router_id: str
    neighbors: tuple[BgpNeighbor, ...]
    hold_time: int = DEFAULT_BGP_HOLD_TIME
    announce: str = DEFAULT_BGP_ANNOUNCE        # healthy | always
    takeover: bool = DEFAULT_BGP_TAKEOVER       # a flow moved to another LB keeps its server

    @property
    def families(self) -> frozenset[int]:
        return frozenset(n.family for n in self.neighbors)


def build_bgp(raw: dict | None) -> Bgp | None:
    if raw is None:
        return None
    return Bgp(
        local_as=int(raw["local_as"]),
        router_id=canonical_address(raw["router_id"]),
        neighbors=tuple(BgpNeighbor(canonical_address(n["address"]), int(n["as"]))
                        for n in raw["neighbors"]),
        hold_time=int(raw.get("hold_time", DEFAULT_BGP_HOLD_TIME)),
        announce=raw.get("announce", DEFAULT_BGP_ANNOUNCE),
        takeover=bool(raw.get("takeover", DEFAULT_BGP_TAKEOVER)),
    )
