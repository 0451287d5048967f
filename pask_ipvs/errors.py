"""Config problems: every one points at FILE:LINE and a JSON path, and all are reported at once.

One bad config should cost the operator one edit cycle, not one per mistake,
so loading collects ``Problem`` values and raises a single ``ConfigError``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

PathPart = str | int
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int                       # 1-based; 0 when no line applies (the file cannot be read)
    path: str                       # JSON path such as "$.services[2].real_servers[0].weight"
    message: str                    # what is wrong and what is allowed

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path}: {self.message}"


class Lines(Protocol):
    """JSON path -> line of the config file (load.LineMap: from the YAML node tree)."""

    def line(self, path: "Sequence[PathPart] | str") -> int: ...


class _NoLines:
    """Lines for data whose problems are never shown (the fast reader's: a config with a
    problem is read again, with lines)."""

    def line(self, path: "Sequence[PathPart] | str") -> int:
        return 0


NO_LINES: Lines = _NoLines()


class ConfigError(Exception):
    """A config with problems; ``problems`` is sorted by line, duplicates removed."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems: list[Problem] = list(dict.fromkeys(sorted(problems)))
        super().__init__("\n".join(str(p) for p in self.problems))


def format_path(parts: Sequence[PathPart]) -> str:
    """("services", 2, "port") -> "$.services[2].port"; odd keys are quoted: $['a b']."""
    out = ["$"]
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _PLAIN_KEY.match(part):
            out.append(f".{part}")
        else:
            out.append(f"[{part!r}]")
    return "".join(out)


_PATH_TOKEN = re.compile(r"""\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\[('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\]""")


def parse_path(path: str) -> tuple[PathPart, ...]:
    """Inverse of ``format_path``."""
    if not path.startswith("$"):
        raise ValueError(f"not a JSON path: {path!r}")
    parts: list[PathPart] = []
    pos = 1
    while pos < len(path):
        m = _PATH_TOKEN.match(path, pos)
        if not m:
            raise ValueError(f"not a JSON path: {path!r}")
        key, index, quoted = m.groups()
        if key is not None:
            parts.append(key)
        elif index is not None:
            parts.append(int(index))
        else:
            parts.append(ast.literal_eval(quoted))
        pos = m.end()
    return tuple(parts)
