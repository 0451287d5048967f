"""pask-status: services and real servers with weight, health, connections and rates."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Callable, Sequence

from ..health_file import DEFAULT_HEALTH_FILE
from ..state import DEFAULT_STATE_FILE
from .common import EXIT_ERROR, EXIT_OK, ArgParser

if TYPE_CHECKING:
    from ..backend.base import Backends


def main(argv: Sequence[str] | None = None, prog: str = "pask-status", *,
         backends: "Callable[[], Backends] | None" = None) -> int:
    """The pask-status console script. ``backends``: a factory of the kernel's backends
    (default: the real kernel); only IPVS is read."""
    from ..backend.base import BackendError
    from ..status import format_table, status_report

    p = ArgParser(prog=prog, description="Show IPVS services and real servers with weight, "
                "health, active/inactive connections and rates.")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--state-file", default=DEFAULT_STATE_FILE)
    p.add_argument("--health-file", default=DEFAULT_HEALTH_FILE)
    p.add_argument("--all", action="store_true", help="also show services pask does not own")
    args = p.parse_args(argv)
    if backends is None:
        from ..backend.real import real_backends
        backends = real_backends
    try:
        kernel = backends()
        rows = status_report(kernel.ipvs, args.state_file, args.health_file, args.all)
        ha = ha_report(kernel, args.state_file)
    except (BackendError, OSError, ValueError) as e:
        print(f"pask-status: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.format == "json":
        print(json.dumps({"services": rows, **({"ha": ha} if ha else {})}, indent=1, sort_keys=True))
        return EXIT_OK
    if ha:
        since = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ha['since']))}" \
            if ha["since"] else ""
        print(f"HA role: {ha['role']}{since} (keepalived {ha['keepalived']})")
    if rows:
        print(format_table(rows))
    else:
        print("No services owned by pask in the kernel (pask-status --all shows foreign ones).")
    return EXIT_OK


def ha_report(kernel: "Backends", state_file: str) -> dict | None:
    """With ha (the state file records the keepalived pask-apply started): the node's role."""
    from ..ha import ha_status
    from ..state import load_state

    keepalived = load_state(state_file).engines.get("keepalived")
    if keepalived is None:
        return None
    running = None
    if kernel.engines is not None:
        running = kernel.engines.observe([keepalived])["keepalived"].running
    return ha_status(state_file, running)


if __name__ == "__main__":
    sys.exit(main())
