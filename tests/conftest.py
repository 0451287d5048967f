"""Shared helpers: turn a config text into a Config or into its list of problems.

Config texts are dedented, so tests can write them indented inside the test;
line numbers in assertions count from the first line of the dedented text.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Callable

import pytest

from pask_ipvs.errors import ConfigError, Problem
from pask_ipvs.load import load_config
from pask_ipvs.model import Config

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def _text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


@pytest.fixture
def load_text() -> Callable[[str], Config]:
    """load_text(yaml) -> Config (the text never touches the disk; source is 'test.yaml')."""
    return lambda text: load_config("test.yaml", _text(text))


@pytest.fixture
def problems_of() -> Callable[[str], list[Problem]]:
    """problems_of(yaml) -> the problems of a config that must fail to load."""
    def run(text: str) -> list[Problem]:
        with pytest.raises(ConfigError) as info:
            load_config("test.yaml", _text(text))
        assert info.value.problems, "ConfigError without problems"
        return info.value.problems
    return run


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """write_config(yaml, name='pask.yaml') -> path of the written file."""
    def write(text: str, name: str = "pask.yaml") -> Path:
        path = tmp_path / name
        path.write_text(_text(text), encoding="utf-8")
        return path
    return write


@pytest.fixture
def kernel():
    """An in-memory kernel (the fakes): give it to a pask command as ``backends=lambda: kernel``."""
    from pask_ipvs.backend.fake import fake_backends

    return fake_backends()


@pytest.fixture
def children_on(monkeypatch):
    """forked.py's children as on an idle machine of two CPUs. Threads that earlier tests
    left behind (idle daemon threads: a metrics server's) do not count; a thread the test
    starts does."""
    import os
    import threading

    from pask_ipvs import forked

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setenv(forked.ENV, "1")
    before = set(threading.enumerate())
    monkeypatch.setattr(threading, "active_count",
                        lambda: 1 + sum(1 for t in threading.enumerate() if t not in before))
