"""A file written whole or not at all: a temp file beside it, renamed over it.

The state file, the config cache (core) and the engines' files (backend) are all
written this way. Imports nothing of pask: every layer may use it."""

from __future__ import annotations

import os


def write_atomic(path: str, data: bytes, dir_mode: int = 0o755, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` whole or not at all, with exactly ``mode`` (0600: private;
    keepalived refuses a notify script that others may write). (Not tempfile: importing it
    costs the no-op fast path a tenth of a second under emulation. The pid makes the
    temp name this process's own; pask writes each file from one thread.)"""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=dir_mode, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.path.basename(path)}.{os.getpid()}")
    try:
        os.unlink(tmp)                      # left by a crashed run with this pid
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)                 # the mode asked for, whatever the umask
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
