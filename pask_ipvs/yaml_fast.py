"""The fast YAML reader: yaml-rs (Rust), for files the exact reader would read the same way.

PyYAML with libyaml needs ~1.4 s natively (~6 s in the IPVS VM) for a
1024 x 32 config; yaml-rs reads it in ~0.1 s.  yaml-rs gives no line
numbers and reads YAML 1.2, so it is used only where its result is the
exact reader's (yaml_lines.py, PyYAML):

* the text has no plain scalar that the two YAML versions read differently
  (yaml_scalars.py), and none of the features the two readers treat
  differently or that pask reads through PyYAML alone: anchors, aliases,
  tags, merge keys, directives, document markers, tabs, CR, a BOM, control
  characters and Unicode line breaks;
* no line is longer than ``MAX_LINE``: block nesting is bounded by the
  column, and yaml-rs crashes (not raises) past ~10,000 levels;
* yaml-rs accepts the text, duplicate keys included.

Anything else returns None, and the caller reads the file exactly; a config
that fails validation is read again exactly too, so every error keeps
FILE:LINE and its wording.  tests/test_yaml_fast.py checks that the two
readers agree wherever this one answers.
"""

from __future__ import annotations

import functools
import re

from .yaml_scalars import HEAD, STARTS

MAX_LINE = 4000
_CHARS = ("\t", "\r", "\ufeff", "<<", "\n%", "\n---", "\n...")
# ASCII control characters: PyYAML refuses them, yaml-rs reads them.  Found by
# deleting every other byte (C speed, where a character-class search crawls).
_ASCII_CONTROLS = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_NOT_CONTROL = bytes(b for b in range(256) if b not in _ASCII_CONTROLS)
# Beyond ASCII (searched only in a text that has any): C1 controls and NEL, which
# PyYAML refuses or reads as a line break, LS/PS (line breaks in YAML 1.1 only),
# surrogates and the non-characters.
_NON_ASCII_ODD = "[\x80-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]"


@functools.cache
def _scans() -> "tuple[re.Pattern[str], ...]":
    """An ambiguous plain scalar, or an anchor, alias or tag, where a node can start."""
    return tuple(re.compile(start + HEAD) for start in STARTS)


def exact_reader_needed(text: str) -> bool:
    """Whether only the exact reader may read this text."""
    text = "\n" + text
    if any(c in text for c in _CHARS):
        return True
    if max(map(len, text.split("\n"))) >= MAX_LINE:
        return True
    if text.encode("utf-8", "surrogatepass").translate(None, _NOT_CONTROL):
        return True
    if not text.isascii() and re.search(_NON_ASCII_ODD, text):
        return True
    return any(scan.search(text) is not None for scan in _scans())


def read_fast(text: str) -> object | None:
    """The text's data as the exact reader would give it, or None: read it exactly."""
    if exact_reader_needed(text):
        return None
    import yaml_rs

    try:
        return yaml_rs.loads(text, parse_datetime=False,
                             duplicate_key_policy=yaml_rs.DuplicateKeyPolicy.Error)
    except Exception:           # YAMLDecodeError, and whatever else: the exact reader explains
        return None
