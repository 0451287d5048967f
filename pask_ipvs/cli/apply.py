"""pask-apply: parse the flags, run pipeline.apply_config, print, exit.

Exit codes (docs/design.md "Exit codes"): 0 ok / no changes, 2 changes (with
--detailed-exitcode), 1 any error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Callable, Sequence

from .. import __version__
from ..health_file import DEFAULT_HEALTH_FILE
from ..state import DEFAULT_STATE_FILE
from .common import EXIT_CHANGES, EXIT_ERROR, EXIT_OK, ArgParser

if TYPE_CHECKING:
    from ..backend.base import Backends
    from ..pipeline import ApplyRequest

EPILOG = """\
examples:
  pask-apply --dry-run /etc/pask/config.yaml      show the plan, change nothing
  pask-apply /etc/pask/config.yaml                reconcile the kernel, then verify
  pask-apply --detailed-exitcode config.yaml      exit 0 = no changes, 2 = changed, 1 = error
  pask-apply --format json --dry-run config.yaml  the plan as JSON (for tools)
  pask-apply --offline config.yaml                plan against an empty kernel (no root, no kernel access)

Plan lines read like a diff: '+' add, '~' change, '-' delete, '±' replace.
Only objects pask owns are changed: the services the config declares (recorded
in the state file) and the nftables table 'inet pask'. Foreign IPVS services and
other nft tables are never touched. A bad config changes nothing and lists
every problem as FILE:LINE: $.path: message.

Beside the state file pask keeps a cache of the validated config and the
fingerprint of the last verified kernel: a re-run with nothing changed answers
from them without parsing the config (-v says so). Both are only for speed;
deleting them makes the next run do everything the long way.

environment:
  PASK_FORK=0    a big run (hundreds of services) gives part of its config
                 load, IPVS writes and kernel reads to a forked child on a
                 second CPU; 0 keeps every step in one process (same result)
"""


def parser(prog: str = "pask-apply") -> argparse.ArgumentParser:
    p = ArgParser(prog=prog, description="Validate a pask config, reconcile the kernel "
                "(IPVS, nftables, VIPs, sysctls) to it, and verify the result.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG", help="the YAML config file")
    p.add_argument("--dry-run", "--check", dest="dry_run", action="store_true",
                   help="print the plan and change nothing")
    p.add_argument("--diff", action="store_true",
                   help="print the plan before applying (the default in --dry-run)")
    p.add_argument("--detailed-exitcode", action="store_true",
                   help="exit 0 when nothing changed (or would change), 2 when something did, 1 on error")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.add_argument("--state-file", default=DEFAULT_STATE_FILE,
                   help=f"what pask owns, kept between runs (default {DEFAULT_STATE_FILE})")
    p.add_argument("--health-file", default=DEFAULT_HEALTH_FILE,
                   help=f"server health written by pask-healthd (default {DEFAULT_HEALTH_FILE})")
    p.add_argument("--node", metavar="NAME",
                   help="with ha: which of ha.nodes this host is (default: the node whose "
                        "address this host holds on ha.peer_link)")
    p.add_argument("--offline", action="store_true",
                   help="plan against an empty in-memory kernel; implies --dry-run")
    p.add_argument("-v", "--verbose", action="count", default=0, help="list every op, show progress")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.add_argument("--version", action="version", version=f"pask-ipvs {__version__}")
    return p


class TextOutput:
    """pipeline.Output for a terminal: the plan and results on stdout (text format only),
    progress and errors on stderr; -q keeps errors only."""

    def __init__(self, fmt: str, quiet: bool):
        self.fmt, self.quiet = fmt, quiet

    def info(self, msg: str) -> None:
        if not self.quiet and self.fmt == "text":
            print(msg, flush=True)

    def progress(self, msg: str) -> None:
        if not self.quiet:
            print(f"pask-apply: {msg}", file=sys.stderr, flush=True)

    def error(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)


def request_of(args: argparse.Namespace) -> "ApplyRequest":
    from ..pipeline import ApplyRequest

    return ApplyRequest(config=args.config, state_file=args.state_file,
                        health_file=args.health_file, dry_run=args.dry_run,
                        offline=args.offline, diff=args.diff, verbose=args.verbose,
                        quiet=args.quiet, json=args.format == "json",
                        detailed_exitcode=args.detailed_exitcode, node=args.node)


def exit_code(request: "ApplyRequest", report: dict) -> int:
    """1 any error; 2 changes (only with --detailed-exitcode); else 0."""
    if report["errors"]:
        return EXIT_ERROR
    return EXIT_CHANGES if request.detailed_exitcode and report["changed"] else EXIT_OK


def default_backends(offline: bool) -> "Callable[[], Backends]":
    """The kernel, or (--offline) an empty in-memory one."""
    if offline:
        from ..backend.fake import fake_backends
        return fake_backends
    from ..backend.real import real_backends
    return real_backends


def main(argv: Sequence[str] | None = None, *, prog: str = "pask-apply",
         backends: "Callable[[], Backends] | None" = None, exiting: bool = False) -> int:
    """pask-apply. ``backends``: a factory of the kernel's backends (default: the real
    kernel, or the fakes with --offline); ``exiting``: the process ends right after
    (ApplyRequest.exiting)."""
    from dataclasses import replace

    from ..pipeline import apply_config

    args = parser(prog).parse_args(argv)
    request = replace(request_of(args), exiting=exiting)
    report = apply_config(request, backends or default_backends(args.offline),
                          TextOutput(args.format, args.quiet))
    if args.format == "json":
        print(json.dumps(report, indent=1, sort_keys=True))
    return exit_code(request, report)


def run() -> None:
    """The console script: main(), then the process ends at once (output flushed, the
    exit code main's), leaving what the run built to the OS instead of freeing it
    object by object, and skipping the interpreter's teardown (~1 s in the IPVS VM
    after a cold apply at 1024 x 32). Nothing is left to write: the state file and the
    config cache are written whole (atomic_file.write_atomic) before main returns."""
    code = main(exiting=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
