"""pask-status: what the kernel is doing now, by service name, with health (CLI: cli/status.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .objects import DestStats, IpvsObserved, Stats

if TYPE_CHECKING:
    from .backend.base import IpvsBackend


def status_rows(ipvs: IpvsObserved, names: dict, health: dict, show_all: bool) -> list[dict]:
    """One row per (service, dest); a service with no dest gets one row with dest fields empty."""
    from .health_file import health_key
    from .render.text import to_jsonable

    rows = []
    for key in sorted(ipvs.services):
        name = names.get(key)
        if name is None and not show_all:
            continue
        svc = ipvs.services[key]
        sstats = ipvs.service_stats.get(key, Stats())
        base = {"service": name or "(foreign)", "virtual": str(key), "scheduler": svc.scheduler,
                "persistence": svc.timeout, "service_stats": to_jsonable(sstats)}
        dests = sorted(ipvs.dests_of(key), key=lambda d: (d.addr, d.port))
        if not dests:
            rows.append({**base, "server": None})
        for d in dests:
            ds = ipvs.dest_stats.get(d.key, DestStats())
            up = health.get(health_key(name, d.addr, d.port)) if name else None
            rows.append({**base, "server": str(d.key), "fwd": d.fwd, "weight": d.weight,
                         "health": "unknown" if up is None else ("up" if up else "down"),
                         "active": ds.active_conns, "inactive": ds.inact_conns,
                         "cps": ds.stats.cps, "inpps": ds.stats.inpps, "outpps": ds.stats.outpps,
                         "inbps": ds.stats.inbps, "outbps": ds.stats.outbps})
    return rows


COLUMNS = (("service", "SERVICE"), ("virtual", "VIRTUAL"), ("scheduler", "SCHED"),
           ("server", "SERVER"), ("fwd", "FWD"), ("weight", "WEIGHT"), ("health", "HEALTH"),
           ("active", "ACTIVE"), ("inactive", "INACT"), ("cps", "CPS"), ("inpps", "IN-PPS"),
           ("outpps", "OUT-PPS"))


def format_table(rows: list[dict]) -> str:
    table = [[h for _, h in COLUMNS]]
    for r in rows:
        table.append(["-" if r.get(k) is None else str(r.get(k)) for k, _ in COLUMNS])
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def status_report(ipvs_backend: "IpvsBackend", state_file: str, health_file: str,
                  show_all: bool = False) -> list[dict]:
    """The rows pask-status shows, read from ``ipvs_backend`` (real or fake) with the
    names of the state file and the health of the health file. Raises BackendError,
    OSError or ValueError (a corrupt file)."""
    from .health_file import load_health
    from .state import load_state

    state = load_state(state_file)
    health = load_health(health_file)
    ipvs = ipvs_backend.observe(stats=True)
    names = {key: name for name, key in state.services.items()}
    return status_rows(ipvs, names, health, show_all)
