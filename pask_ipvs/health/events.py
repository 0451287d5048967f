"""pask-healthd's event log."""

from __future__ import annotations

import json
import sys
import time
from typing import Callable, TextIO


class EventLog:
    """Structured log: one JSON object per line on stderr (journald keeps them as they are)."""

    def __init__(self, stream: TextIO | None = None, verbose: bool = False,
                 clock: Callable[[], float] = time.time):
        self.stream = stream
        self.verbose = verbose
        self.clock = clock

    def __call__(self, event: str, level: str = "info", **fields: object) -> None:
        if level == "debug" and not self.verbose:
            return
        now = self.clock()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        record = {"ts": stamp, "level": level, "event": event, **fields}
        stream = self.stream or sys.stderr
        stream.write(json.dumps(record, default=str) + "\n")
        stream.flush()
