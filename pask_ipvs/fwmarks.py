"""Marks: fwmarks for services with filters (their nft rules mark the traffic, IPVS schedules
by mark), and the ct marks that find a conntrack helper's expected flows (model.Service.needs_mark)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from .model import Config

FWMARK_BASE = 0x10000        # first fwmark pask allocates; below is left to other tools


def fwmarks_for(config: "Config", previous: Mapping[str, int]) -> dict[str, int]:
    """The fwmark of every service that needs one, given the marks of the last run
    (the state file's): the one way every pask command allocates them."""
    return allocate_fwmarks([s.name for s in config.services if s.needs_mark],
                            {s.name: s.fwmark for s in config.services if s.fwmark},
                            previous)


def allocate_fwmarks(names_needing: list[str], explicit: dict[str, int],
                     previous: Mapping[str, int]) -> dict[str, int]:
    """Stable fwmarks: explicit ones win, a service keeps its mark, new ones take the lowest free."""
    out: dict[str, int] = {}
    used = set(explicit.values())
    for name in names_needing:
        if name in explicit:
            out[name] = explicit[name]
    for name in names_needing:
        if name not in out and name in previous and previous[name] not in used:
            out[name] = previous[name]
            used.add(previous[name])
    nxt = FWMARK_BASE
    for name in names_needing:
        if name in out:
            continue
        while nxt in used:
            nxt += 1
        out[name] = nxt
        used.add(nxt)
    return out
