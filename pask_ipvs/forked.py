"""Part of a big job in a forked child, so that a run at scale uses a second CPU.

A cold pask-apply at 1024 x 32 is Python work on one CPU (docs/performance.md);
the host, the IPVS VM included, has more. ``start(fn, *args)`` runs ``fn`` in a
forked child while the caller does its own share; ``Child.result()`` then
returns ``fn``'s value, pickled back through a pipe.

Only ever an optimisation: whenever a child cannot be used (one CPU, other
threads running, no fork, the child failed, died or answered nothing readable)
``start`` returns None or ``result`` raises ``ChildFailed``, and the caller
does that share itself, so no result depends on a child. (The one exception is
a share of IPVS writes: a child that dies mid-share leaves the outcome of its
ops unknown, and backend/ipvs.py reports them so.) The child leaves by
``os._exit`` (no atexit handlers, no buffered output flushed twice), and dies
with its parent.

Imports nothing of pask: every layer may use it.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
from typing import Callable

# A test or an operator can turn children off (PASK_FORK=0): every share then runs in
# the calling process, one after the other.
ENV = "PASK_FORK"


class ChildFailed(Exception):
    """The child gave no usable answer: the caller does its share itself."""


def usable() -> bool:
    """Whether a child would run beside this process: fork exists, more than one CPU is
    ours, and no other thread runs (a fork copies only the calling thread: a lock another
    thread holds would stay locked in the child forever)."""
    if os.environ.get(ENV, "1") == "0" or not hasattr(os, "fork"):
        return False
    if threading.active_count() > 1:
        return False
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return cpus > 1


class Child:
    """A forked child computing one value."""

    def __init__(self, pid: int, fd: int):
        self.pid = pid
        self._fd = fd

    def result(self) -> object:
        """The child's value (waits for it); ChildFailed when there is none."""
        try:
            with os.fdopen(self._fd, "rb") as f:
                data = f.read()
        finally:
            _, status = os.waitpid(self.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise ChildFailed(f"child {self.pid} ended with status {status}")
        try:
            ok, value = pickle.loads(data)
        except Exception as exc:
            raise ChildFailed(f"child {self.pid} answered nothing readable: {exc!r}") from None
        if not ok:
            raise ChildFailed(f"child {self.pid} failed: {value}")
        return value

    def abandon(self) -> None:
        """The caller gave up on this share (its own failed): end the child now, and reap it."""
        import signal

        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(self._fd)
        os.waitpid(self.pid, 0)


def _die_with(parent: int) -> None:
    """The child ends when its parent does (killed mid-run: its share is not carried on
    behind its back): PR_SET_PDEATHSIG, then a check that the parent did not go first."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):      # not Linux: the pipe's EPIPE ends it at its answer
        pass
    if os.getppid() != parent:
        os._exit(1)


_PR_SET_PDEATHSIG = 1                        # linux/prctl.h


def start(fn: Callable[..., object], *args: object) -> Child | None:
    """``fn(*args)`` in a forked child, or None when no child can be used (see usable())."""
    if not usable():
        return None
    for stream in (sys.stdout, sys.stderr):    # else the child's copy of a buffer is written too
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    parent = os.getpid()
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return None
    if pid == 0:                                # the child: answer, then leave at once
        code = 1
        try:
            os.close(r)
            _die_with(parent)
            try:
                answer: tuple[bool, object] = (True, fn(*args))
            except BaseException as exc:        # reported, not raised: the parent decides
                answer = (False, repr(exc))
            data = pickle.dumps(answer, pickle.HIGHEST_PROTOCOL)
            with os.fdopen(w, "wb") as f:
                f.write(data)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    return Child(pid, r)
