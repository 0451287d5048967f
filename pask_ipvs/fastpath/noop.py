"""The no-op fast path of pask-apply.

A run that leaves the kernel verified equal to the config records, in the state
file (``PaskState.last_verified``), two digests: of its inputs (pask's code, the
config file, the health file, what pask owns) and of the kernel it read
(kernel_digest). The next run with the same inputs reads the kernel's digest the
cheap way (no dest decoded, no YAML parsed); when it is the same too, the plan
would be empty: nothing is loaded, expanded or diffed. Any difference, anywhere,
takes the ordinary path. Imports are kept small: this is the whole of a no-op run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ..backend.base import Backends
    from ..objects import Desired
    from ..state import ConfigDigest, PaskState
    from ..verify import Outcome

EMPTY_PLAN_COUNTS = {"add": 0, "set": 0, "delete": 0, "replace": 0}   # Plan().counts()


def inputs_unchanged(state: "PaskState", code: bytes, text: "str | ConfigDigest",
                     health_raw: bytes) -> bool:
    """The last verified run had these very inputs (and nothing is draining)."""
    last = state.last_verified
    return bool(last) and not state.draining and \
        last["inputs"] == state.inputs_digest(code, text, health_raw)


def kernel_unchanged(state: "PaskState", backends: "Backends",
                     note: "Callable[[str], None] | None" = None) -> bool:
    """The kernel's digest now is the one the last verified run left (``note`` hears why not)."""
    from ..backend.base import BackendError
    from .kernel_digest import kernel_digest_now

    last = state.last_verified
    try:
        now = kernel_digest_now(backends, last.get("vip_interface"), last["sysctls"],
                                last.get("modules", ()))
    except BackendError:
        return False           # the ordinary path reads again, and reports what fails
    if now != last["kernel"] and note:
        note("config unchanged, kernel changed since the last verified apply: planning")
    return now == last["kernel"]


def fill_unchanged(report: dict, *, dry_run: bool, with_plan_text: bool) -> None:
    """The report of a run whose plan is empty: what the ordinary path puts in it."""
    from ..render import NO_CHANGES

    report.update(changed=False, counts=dict(EMPTY_PLAN_COUNTS), verified=None if dry_run else True)
    if with_plan_text:
        report["plan_text"] = NO_CHANGES + "\n"


def record_verified(outcome: "Outcome", desired: "Desired", code: bytes,
                    text: "str | ConfigDigest", health_raw: bytes) -> None:
    """Into outcome.state: only after a run whose result was verified, with nothing draining."""
    from .kernel_digest import kernel_digest

    if not outcome.verified or outcome.state.draining or outcome.observed is None:
        return
    if desired.engines or desired.sync_daemons:   # ha: a daemon's death is no kernel digest's
        return
    kernel = kernel_digest(outcome.observed)
    if kernel is None:
        return
    outcome.state.last_verified = {
        "inputs": outcome.state.inputs_digest(code, text, health_raw),
        "kernel": kernel,
        "sysctls": sorted(desired.sysctls),
        "vip_interface": desired.vip_interface,
    }
    if desired.modules:
        outcome.state.last_verified["modules"] = sorted(desired.modules)
