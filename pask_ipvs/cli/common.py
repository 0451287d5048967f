"""What every pask command shares: exit codes and an argument parser that keeps them."""

from __future__ import annotations

import argparse
import sys

# docs/design.md "Exit codes": 0 ok / no changes, 2 changes (with --detailed-exitcode),
# 1 any error. argparse's own usage errors exit 1 too, never 2, so that 2 always means
# "changes" to scripts and Ansible.
EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


class ArgParser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit 1: 2 means "changes"
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")
