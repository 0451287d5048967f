"""BIRD 2's files for ``bgp:``, rendered from the model: bird.conf (the sessions) and
announce.conf (the VIPs announced now, included by bird.conf).

Pure text; pask_ipvs.bgp decides what goes in, backend/engines.py writes the files and
runs BIRD. pask-apply writes both; pask-healthd rewrites announce.conf alone when a
VIP's last usable real server fails or comes back, and makes BIRD read it again
(SIGHUP: BIRD reconfigures, its sessions stay up, the static protocol announces or
withdraws only the routes that changed). The BGP side of it is in docs/kernel-facts.md
"BGP with BIRD 2".
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterable

from ..objects import Engine, EngineFile, family_of
from .engine_dir import EngineDir

if TYPE_CHECKING:
    from ..bgp_config import Bgp, BgpNeighbor

ENGINE = "bird"
ENGINE_DIR_NAME = "bgp"
HEADER = "# Rendered by pask-apply (the config's bgp:): do not edit, pask-apply rewrites it.\n"
ANNOUNCE_HEADER = ("# Rendered by pask (the config's bgp:): the VIPs announced now. pask-apply and "
                   "pask-healthd rewrite it.\n")
STATIC = {4: "pask_vips4", 6: "pask_vips6"}      # BIRD protocol names of the announced VIPs
CONNECT_RETRY_S = 5       # BIRD's default is 120 s: an LB that comes back would wait that long
ERROR_WAIT_S = (5, 30)    # after a session error, wait this long (doubling up to the second)


class BgpPaths(EngineDir):
    """This LB's BIRD files."""

    NAME = ENGINE_DIR_NAME

    @property
    def conf(self) -> str:
        return os.path.join(self.dir, "bird.conf")

    @property
    def announce(self) -> str:
        return os.path.join(self.dir, "announce.conf")

    @property
    def ctl(self) -> str:
        return os.path.join(self.dir, "bird.ctl")

    @property
    def pid(self) -> str:
        return os.path.join(self.dir, "bird.pid")


def protocol_name(neighbor: "BgpNeighbor") -> str:
    """A BIRD protocol name for a neighbor: letters, digits and _ only."""
    return "peer_" + "".join(c if c.isalnum() else "_" for c in neighbor.address)


def bird_conf(bgp: "Bgp", paths: BgpPaths) -> str:
    keepalive = max(1, bgp.hold_time // 3)
    lines = [HEADER.rstrip("\n"),
             f"router id {bgp.router_id};",
             "log syslog { info, remote, warning, error, auth, fatal, bug };",
             "",
             "# the interfaces, so that BGP finds the links to its neighbors",
             "protocol device {",
             "    scan time 10;",
             "}",
             "",
             "# the VIPs announced now (pask_vips4, pask_vips6)",
             f'include "{paths.announce}";']
    for n in bgp.neighbors:
        channel = "ipv6" if n.family == 6 else "ipv4"
        lines += ["",
                  f"protocol bgp {protocol_name(n)} {{",
                  f"    local as {bgp.local_as};",
                  f"    neighbor {n.address} as {n.asn};",
                  f"    hold time {bgp.hold_time};",
                  f"    keepalive time {keepalive};",
                  f"    connect retry time {CONNECT_RETRY_S};",
                  f"    error wait time {ERROR_WAIT_S[0]}, {ERROR_WAIT_S[1]};",
                  # a dead LB's routes must leave the router at once, not be kept as stale
                  "    graceful restart off;",
                  f"    {channel} {{",
                  "        import none;",
                  f'        export where proto = "{STATIC[n.family]}";',
                  "        next hop self;",
                  "    };",
                  "}"]
    return "\n".join(lines) + "\n"


def announce_conf(families: Iterable[int], vips: Iterable[str]) -> str:
    """One static protocol per family with a neighbor: a blackhole host route per VIP
    announced. The route is never put in this LB's kernel (no kernel protocol): it only
    carries the VIP to BGP, which sends this LB's own address as the next hop."""
    vips = sorted(vips, key=lambda v: (family_of(v), v))
    lines = [ANNOUNCE_HEADER.rstrip("\n")]
    for family in sorted(set(families)):
        plen = 128 if family == 6 else 32
        lines += [f"protocol static {STATIC[family]} {{",
                  f"    ipv{family};",
                  *(f"    route {v}/{plen} blackhole;" for v in vips if family_of(v) == family),
                  "}"]
    return "\n".join(lines) + "\n"


def bird_engine(bgp: "Bgp", paths: BgpPaths, announced: Iterable[str]) -> Engine:
    run = ("bird", "-c", paths.conf, "-s", paths.ctl, "-P", paths.pid)
    return Engine(ENGINE,
                  (EngineFile(paths.conf, bird_conf(bgp, paths)),
                   EngineFile(paths.announce, announce_conf(bgp.families, announced))),
                  argv=run, foreground_argv=(*run, "-f"), reload="hup", stale=(paths.ctl,))
