"""The command line: `pask` and its commands, each a thin shell that parses arguments,
calls its use case with real backends, prints, and exits with the design's codes.

    pask-apply    cli/apply.py      -> pipeline.apply_config
    pask validate cli/validate.py   -> load.load_config
    pask-status   cli/status.py     -> status.status_rows
    pask-healthd  cli/healthd.py    -> health.daemon.HealthDaemon
    pask realserver  cli/realserver.py -> realserver (plan_up / plan_down / execute)

Each command's module is imported only when it runs: start-up is most of a no-op run.
"""

from __future__ import annotations

import sys
from typing import Sequence

from .. import __version__
from .common import EXIT_CHANGES, EXIT_ERROR, EXIT_OK  # noqa: F401  (the codes, for callers)

COMMANDS = {
    "apply": "validate, reconcile and verify (same as pask-apply)",
    "validate": "check a config file without touching the kernel",
    "status": "services, servers, health, weights, connections (same as pask-status)",
    "healthd": "run the health daemon (same as pask-healthd)",
    "realserver": "prepare or undo a real server for L2/L3 DSR",
}


def apply_main(argv: Sequence[str] | None = None, **kw) -> int:
    from .apply import main as run
    return run(argv, **kw)


def validate_main(argv: Sequence[str] | None = None, prog: str = "pask validate") -> int:
    from .validate import main as run
    return run(argv, prog)


def status_main(argv: Sequence[str] | None = None, prog: str = "pask-status", **kw) -> int:
    from .status import main as run
    return run(argv, prog, **kw)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: pask COMMAND [ARGS]\n\ncommands:")
        for name, what in COMMANDS.items():
            print(f"  {name:<11} {what}")
        print("\n'pask COMMAND --help' tells more.")
        return EXIT_OK if argv else EXIT_ERROR
    if argv[0] == "--version":
        print(f"pask-ipvs {__version__}")
        return EXIT_OK
    cmd, rest = argv[0], argv[1:]
    if cmd == "apply":
        return apply_main(rest, prog="pask apply")
    if cmd == "validate":
        return validate_main(rest)
    if cmd == "status":
        return status_main(rest, prog="pask status")
    if cmd == "healthd":
        from .healthd import main as healthd_main
        return healthd_main(rest)
    if cmd == "realserver":
        from .realserver import main as realserver_main
        return realserver_main(rest)
    print(f"pask: unknown command {cmd!r} (commands: {', '.join(COMMANDS)})", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
