"""pask's files on disk: each written whole or not at all, by one writer at a time."""

from __future__ import annotations

import json
import os

from .atomic_file import write_atomic


def write_json_atomic(path: str, data: object) -> None:
    write_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


class locked:
    """flock on ``<state file>.lock``: one pask-apply (or healthd write) at a time.

    Non-blocking: a second apply fails at once with a clear message rather than
    queueing behind a long one. Read-only runs take a shared lock.
    """

    def __init__(self, state_file: str, exclusive: bool = True):
        self.path = f"{state_file}.lock"
        self.exclusive = exclusive
        self._fd: int | None = None

    def __enter__(self) -> "locked":
        import fcntl
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            if not self.exclusive:
                return self  # a read-only dry run by a user who cannot write /var/lib/pask
            raise
        fcntl.flock(self._fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
