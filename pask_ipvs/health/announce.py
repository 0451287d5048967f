"""pask-healthd's half of ``bgp: {announce: healthy}``: keep BIRD's announce.conf equal
to the VIPs that have a usable real server as this daemon sees them, and make BIRD
read it again when that changes (docs/design.md "bgp").

The file is rendered by the same function pask-apply uses (pask_ipvs.bgp), from the
health this daemon holds, so the two never disagree about a VIP: pask-apply renders it
from the health file, which the daemon writes first. The daemon only rewrites
announce.conf and signals BIRD (SIGHUP: BIRD reconfigures, its sessions stay up, the
static protocol withdraws or announces just the VIPs that changed); starting BIRD and
its bird.conf are pask-apply's.
"""

from __future__ import annotations

import asyncio
from typing import Mapping

from ..bgp import engine
from ..model import Config
from ..render.bgp import BgpPaths
from .events import EventLog


RECHECK_S = 5.0     # how often the file on disk is checked again (a pask-apply run that read
                    # the health file just before a transition may have written the older set)


class BgpAnnouncer:
    def __init__(self, engines, state_file: str, log: EventLog):
        self.engines = engines                 # EngineBackend (None: cannot run daemons)
        self.paths = BgpPaths.for_state_file(state_file)
        self.log = log
        self.written: str | None = None        # announce.conf as last written or found
        self.vips: tuple[str, ...] | None = None
        self.reloads = 0
        self.stopped_logged = False

    def update(self, config: Config, up: Mapping[str, bool], *, force: bool = False) -> bool:
        """Bring announce.conf and BIRD in line with ``up``; True when BIRD was told.
        Without ``force``, nothing is read when the set is what this daemon last wrote."""
        if config.bgp is None or self.engines is None:
            return False
        from ..bgp import announced_vips

        bird = engine(config, self.paths, up)
        announce = next(f for f in bird.files if f.path == self.paths.announce)
        if announce.content == self.written and not force:
            return False
        vips = announced_vips(config, up)
        try:
            seen = self.engines.observe([bird])[bird.name]
            if not seen.running:
                if not self.stopped_logged:
                    self.log("bgp_not_running", level="warning", file=announce.path,
                             message="BIRD is not running: pask-apply starts it with the VIPs "
                                     "the health file allows")
                self.stopped_logged = True
                self.written = None
                return False
            self.stopped_logged = False
            on_disk = next(f for f in seen.files if f.path == announce.path)
            if on_disk == announce:
                self.written, self.vips = announce.content, vips
                return False
            self.engines.reload(bird._replace(files=(announce,)))
        except Exception as e:      # a daemon that cannot tell BIRD must go on probing
            self.log("bgp_announce_failed", level="error", error=str(e))
            self.written = None
            return False
        before = set(self.vips or ())
        self.log("bgp_announce", vips=list(vips),
                 announced=sorted(set(vips) - before) if self.vips is not None else list(vips),
                 withdrawn=sorted(before - set(vips)))
        self.written, self.vips = announce.content, vips
        self.reloads += 1
        return True

    async def watch(self, daemon) -> None:
        """Check the file on disk every RECHECK_S against the daemon's view (run beside
        HealthDaemon.serve, in its event loop)."""
        while True:
            await asyncio.sleep(RECHECK_S)
            self.update(daemon.config, daemon.machine.up_map(), force=True)
