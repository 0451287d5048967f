"""pask-status: services and real servers with weight, health, connections and rates."""

from __future__ import annotations

import json
import sys
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
        rows = status_report(backends().ipvs, args.state_file, args.health_file, args.all)
    except (BackendError, OSError, ValueError) as e:
        print(f"pask-status: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.format == "json":
        print(json.dumps({"services": rows}, indent=1, sort_keys=True))
    elif rows:
        print(format_table(rows))
    else:
        print("No services owned by pask in the kernel (pask-status --all shows foreign ones).")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
