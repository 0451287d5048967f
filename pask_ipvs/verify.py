"""verify: observe again and plan again; the state file an apply leaves; the outcome."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from .backend.base import Backends
from .objects import Desired, Observed, ServiceKey
from .observe import observe, observe_after
from .plan import Op, Plan, diff
from .state import PaskState

if TYPE_CHECKING:
    from .apply import ApplyResult


def verify(desired: Desired, backends: Backends, state: PaskState, *,
           now: float | None = None, drain_timeout: int = 0,
           before: Observed | None = None, ops: Iterable[Op] = (),
           touched: Iterable[ServiceKey] = ()) -> tuple[Plan, Observed]:
    """Observe again and plan again: whatever remains is drift the apply did not fix.

    Given ``before`` (the observation the plan was made from) and the ``ops`` that
    were run, IPVS is read again only where the ops wrote (observe_after), so a
    one-weight change costs one service's read, not the whole table's. Without
    ``before``, everything is read again. ``touched``: the IPVS services the ops wrote
    to (observe.touched_services), for a caller that no longer holds the ops."""
    stats = drain_timeout > 0
    if before is None:
        observed = observe(desired, backends, stats=stats)
    else:
        # draining dests' services too: their connection counts decide the next op
        observed = observe_after(desired, backends, before, ops, stats=stats,
                                 also={dkey.service for dkey in state.draining},
                                 touched=touched)
    return diff(desired, observed, state, now=time.time() if now is None else now,
                drain_timeout=drain_timeout), observed


def next_state(previous: PaskState, desired: Desired, fwmarks: dict[str, int],
               plan: Plan, result: ApplyResult | None,
               observed_after: Observed | None = None) -> PaskState:
    """The state file after an apply. On failure, keep owning what the kernel may still hold.

    The nft listing digest is taken from the kernel after the apply, so a later
    hand edit of ``inet pask`` shows up as drift."""
    services = {name: key for key, name in desired.owners.items()}
    if result is not None and not result.ok:
        for name, key in previous.services.items():
            services.setdefault(name, key)
    nft_digest = previous.nft_listing_digest
    if result is not None and result.nft_touched:
        nft_digest = result.nft.listing_digest if result.nft else None
    if observed_after is not None and desired.nft is not None and observed_after.nft is not None \
            and observed_after.nft.comment == desired.nft.digest:
        nft_digest = observed_after.nft.listing_digest
    if desired.nft is None:
        nft_digest = None
    sync = set(desired.sync_daemons)
    engines = dict(desired.engines)
    if result is not None and not result.ok:      # what may still run
        sync |= set(desired.retired_sync)
        engines = {**desired.retired_engines, **engines}
    return PaskState(
        services=services,
        fwmarks=dict(fwmarks),
        nft_listing_digest=nft_digest,
        vips=sorted(desired.vips),
        draining=dict(plan.draining),
        sync_daemons=sorted(sync),
        engines=engines,
    )


@dataclass
class Outcome:
    plan: Plan
    result: ApplyResult | None          # None: nothing to do
    remaining: Plan                     # what verify still found (empty = verified)
    state: PaskState                    # the state file to write
    observed: Observed | None = None    # the kernel as last read (after the apply, if any)

    @property
    def verified(self) -> bool:
        """The apply (if any) succeeded and the kernel now matches the desired state."""
        return (self.result is None or self.result.ok) and not self.remaining.changed
