"""The config file as text: read once per run, with the one error an unreadable file
gives (a Problem at line 0). Apart from load.py so that a no-op run, which only
digests the text, never imports the YAML parser."""

from __future__ import annotations

from .errors import ConfigError, Problem


def read_config_text(path: str) -> str:
    """The config file's text; a ConfigError (with the reason) when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError([Problem(path, 0, "$", f"cannot read the config file: {reason}")]) from None
