"""Config file -> plain data -> validated, typed ``Config``.

Two YAML readers give the same data (yaml_fast.py says when): the fast one
(yaml-rs) for a file it reads exactly as the exact one would, and the exact
one (yaml_lines.py, PyYAML) for everything else, and for every config that
has a problem, because only it knows lines.  A valid config never pays for
line maps or PyYAML's import.  Plain scalars that YAML 1.1 and 1.2 read
differently are text where the schema wants text and an error elsewhere
(yaml_scalars.py).  Then validate.py checks the data and model.build_model
types it (with the defaults of defaults.py).
"""

from __future__ import annotations

import contextlib
import gc
from typing import TYPE_CHECKING

from .config_file import read_config_text
from .errors import NO_LINES, ConfigError, Lines, PathPart, Problem, format_path

if TYPE_CHECKING:
    from .model import Config


@contextlib.contextmanager
def gc_paused():
    """A big config makes ~300k small objects and no garbage: the cyclic GC would run over
    them again and again (half the load time at 1024 x 32)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_document(path: str, text: str) -> tuple[object, Lines]:
    """YAML -> plain data + JSON path -> line map, read exactly (PyYAML, YAML 1.1 types).
    Raises ConfigError (syntax, duplicate keys)."""
    from .yaml_lines import parse_document

    with gc_paused():
        data, lines, problems = parse_document(path, text)
    if problems:
        raise ConfigError(problems)
    return data, lines


def read_exact(path: str, text: str) -> tuple[object, Lines, list[Problem], set[str]]:
    """(data, lines, problems, paths of ambiguous scalars already reported) from the exact
    reader, with ambiguous plain scalars settled: their text where the schema wants a
    string, a problem anywhere else.  Raises ConfigError when the text is not YAML."""
    from .validate import wants_text
    from .yaml_fast import exact_reader_needed
    from .yaml_lines import ambiguous_scalars, parse_document

    data, lines, problems = parse_document(path, text)
    reported: set[str] = set()
    if exact_reader_needed(text):            # the cheap scan first: the walk costs more
        for where, line, value, message in ambiguous_scalars(lines):    # type: ignore[arg-type]
            data = _replace(data, where, value)
            if not wants_text(where):
                reported.add(format_path(where))
                problems.append(Problem(path, line, format_path(where), message))
    return data, lines, problems, reported


def _replace(data: object, where: tuple[PathPart, ...], value: str) -> object:
    if not where:
        return value
    parent = data
    for part in where[:-1]:
        parent = parent[part]                # type: ignore[index]
    parent[where[-1]] = value                # type: ignore[index]
    return data


def load_config(path: str, text: str | None = None) -> Config:
    """Read, validate and build the config; ConfigError lists every problem found."""
    from .model import build_model
    from .validate import validate
    from .yaml_fast import read_fast

    if text is None:
        text = read_config_text(path)
    with gc_paused():
        data = read_fast(text)
        if isinstance(data, dict) and not validate(data, NO_LINES, path):
            return build_model(data, path)
        data, lines, problems, reported = read_exact(path, text)
        problems += [p for p in validate(data, lines, path) if p.path not in reported]
        if problems:
            raise ConfigError(problems)
        assert isinstance(data, dict)
        return build_model(data, path)
