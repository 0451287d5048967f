"""pask validate: a pure check of a config file (no kernel access), for editors, CI and
Ansible's ``validate:``."""

from __future__ import annotations

import sys
from typing import Sequence

from .common import EXIT_ERROR, EXIT_OK, ArgParser


def main(argv: Sequence[str] | None = None, prog: str = "pask validate") -> int:
    from ..errors import ConfigError
    from ..load import load_config

    p = ArgParser(prog=prog, description="Check a pask config file; exit 0 valid, 1 invalid.")
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        for prob in e.problems:
            print(prob, file=sys.stderr)
        print(f"{args.config}: {len(e.problems)} problem(s)", file=sys.stderr)
        return EXIT_ERROR
    if not args.quiet:
        n = sum(len(s.real_servers) for s in config.services)
        print(f"{args.config}: valid ({len(config.services)} services, {n} real servers)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
