"""One canonical order of an mh service's destinations in the kernel (docs/design.md
"bgp", kernel-facts.md "mh table and the order of the server list").

IPVS's Maglev table (ip_vs_mh.c) is a function of the service's server list, walked in
the kernel's order, and of each server's last non-zero weight; its hash keys are fixed,
so two LBs with the same list in the same order build the same table. The kernel adds
a destination at the head of that list (``list_add_rcu``) and can reorder it in no
other way. So pask adds an mh service's destinations in one canonical order (ascending
address, then port: the list reads descending), and when the kernel's list is not in
that order (a server added below the others, a service that became mh) it takes the
servers that are out of place out and adds them again, each at its turn.

Pure: the sequence of insertions only; plan.py turns it into ops.
"""

from __future__ import annotations

from typing import Hashable, Sequence, TypeVar

K = TypeVar("K", bound=Hashable)


def insertions(want: Sequence[K], have: Sequence[K]) -> list[K]:
    """The destinations to insert at the head of the kernel's list, in this order, so that
    the list ends up as ``want`` reversed (``want``: the canonical insertion order).

    ``have`` is the kernel's list now, head first. Destinations in it that ``want`` lacks
    are deleted elsewhere (deleting keeps the others' order). Those that ``want`` has and
    that are returned must be deleted first (a re-add); the others stay where they are.
    The fewest are moved: the longest tail of the final list that ``have`` already holds
    in that order stays."""
    wanted = set(want)
    present = [k for k in have if k in wanted]
    final = list(reversed(want))                 # the list as it must read, head first
    j = len(present) - 1
    m = len(final)
    while m > 0 and j >= 0:                      # match the final list's tail, from its end
        while j >= 0 and present[j] != final[m - 1]:
            j -= 1
        if j < 0:
            break
        m -= 1
        j -= 1
    return list(reversed(final[:m]))
