"""Where an engine's rendered files live: a folder beside pask's state file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class EngineDir:
    """Beside the state file, so several LBs on one machine (the labs' namespaces, each
    with its own state file) never share an engine's files."""

    NAME: ClassVar[str] = ""
    dir: str

    @classmethod
    def for_state_file(cls, state_file: str):
        return cls(os.path.join(os.path.dirname(os.path.abspath(state_file)), cls.NAME))
