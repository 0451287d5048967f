"""Scale-out behind ECMP (docs/design.md "bgp"), pure: what the kernel and BIRD must hold.

Every LB runs the same services and announces each VIP to its routers as a host route
(BIRD 2, rendered by render/bgp.py and run as an engine like ha's keepalived). The
routers spread flows over the LBs by ECMP. When an LB dies its sessions time out
(hold_time) and the routers move its flows to the others; with ``takeover`` those flows
keep their real server, because

* every LB picks a server with the same Maglev table: scheduler mh, the servers added in
  one canonical order (mh_order.py), each at its configured weight first so that the
  kernel gives it its table slots even if it must then be at weight 0
  (``canonical_dests``);
* a server at weight 0 (down, disabled) keeps its slots, and ``mh-fallback`` sends its
  flows on to the same other server on every LB (without it they are dropped);
* ``sloppy_tcp`` / ``sloppy_sctp`` let an LB take over a connection mid-stream.

``announce: healthy``: a VIP is announced while one of its services has a usable real
server (weight > 0 once health is applied); pask-apply renders that from the health
file, pask-healthd (health/announce.py) from its own view, through the same function.
"""

from __future__ import annotations

from typing import Mapping

from .bgp_expand import address_order
from .model import Config
from .objects import Engine
from .render.bgp import BgpPaths, bird_engine


def announced_vips(config: Config, health: Mapping[str, bool] | None = None) -> tuple[str, ...]:
    """The VIPs to announce now: all of them with ``announce: always``; else each VIP one
    of whose services has a real server that takes new connections (weight > 0 with
    health applied: an enabled server that is up, or a backup standing in)."""
    from .desired import effective_weights

    bgp = config.bgp
    if bgp is None:
        return ()
    vips: dict[str, bool] = {}
    for svc in config.services:
        if bgp.announce == "always" or vips.get(svc.vip):
            vips[svc.vip] = True
            continue
        weights = effective_weights(svc, health or {})
        vips[svc.vip] = any(w for w in weights.values())
    return tuple(sorted((v for v, up in vips.items() if up), key=address_order))


def engine(config: Config, paths: BgpPaths, health: Mapping[str, bool] | None = None) -> Engine:
    """BIRD for this LB: its files (the VIPs announced per ``health``) and how to run it."""
    assert config.bgp is not None
    return bird_engine(config.bgp, paths, announced_vips(config, health))


def engines(config: Config, state_file: str,
            health: Mapping[str, bool] | None = None) -> dict[str, Engine]:
    """pask-apply's engines for bgp (files beside the state file)."""
    e = engine(config, BgpPaths.for_state_file(state_file), health)
    return {e.name: e}

