"""Plain scalars that YAML 1.1 and YAML 1.2 read differently: the one rule both readers share.

PyYAML reads YAML 1.1 (``on`` is true, ``010`` is 8); the fast reader
(yaml-rs) reads YAML 1.2 (``on`` is a string, ``010`` is 10).  So that no
config changes meaning with the parser, such a scalar is text where the
schema wants text, and an error (quote it) anywhere else.
"""

from __future__ import annotations

import re

# Each alternative: a form whose reading differs between 1.1 and 1.2, or that
# pask refuses to guess about (the list, plus timestamps and "=").
_FORMS: tuple[tuple[str, str, str], ...] = (
    # (name, regex, what it is read as)
    ("bool", r"(?i:y|yes|n|no|on|off)",
     "a boolean in YAML 1.1 and a string in YAML 1.2"),
    ("prefixed", r"[-+]?0[bBoOxX][0-9a-fA-F_]+",
     "a number in one YAML version and a string in the other"),
    ("leading-zero", r"[-+]?0[0-9_]+(?:\.[0-9_]*)?",
     "octal in YAML 1.1 and decimal in YAML 1.2"),
    ("sexagesimal", r"[-+]?[0-9][0-9_]*(?::[0-9_]+)+(?:\.[0-9_]*)?",
     "a base-60 number in YAML 1.1 and a string in YAML 1.2"),
    ("underscore", r"[-+]?(?=[0-9._]*[0-9])[0-9._]*_[0-9._]*",
     "a number in YAML 1.1 and a string in YAML 1.2"),
    ("exponent", r"[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?[0-9_]*\.[0-9_]*[eE][0-9]+",
     "a string in YAML 1.1 and a float in YAML 1.2"),
    ("special-float", r"[-+]?\.(?i:inf|nan)",
     "infinity or not-a-number, which no setting accepts"),
    ("timestamp", r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:[Tt ].*)?",
     "a date in YAML 1.1 and a string in YAML 1.2"),
    ("value", r"=",
     "a special value in YAML 1.1 and a string in YAML 1.2"),
)

_WHOLE = re.compile("|".join(f"(?P<{name.replace('-', '_')}>{rx})" for name, rx, _ in _FORMS))
_MEANING = {name.replace("-", "_"): text for name, _, text in _FORMS}

# The scan for ambiguous scalars in a whole file.  A plain scalar starts after
# ":" (a key, also a JSON-like "k":v), "- ", "? ", a flow indicator, or a line's
# indentation; each start is searched on its own, because re skips to a
# literal at C speed and crawls through a set of them.  Behind a start,
# HEAD fails on the first character or two of a usual value (a name, an
# address, a port): a superset of the forms above, so a false hit only sends
# the file to the exact reader.  "[&*!]": an anchor, alias or tag there.
STARTS = (r": *", r"- +", r"\? +", r", *", r"\[ *", r"\{ *", r"\n *")
END = r"(?=[ ]*(?:[,\]}#\n]|$))"
HEAD = (r"(?=[yYnNoO=0-9+\-.&*!])"
        r"(?:(?i:y|yes|n|no|on|off|=)" + END +
        r"|[-+]?(?:0[0-9_bBoOxX]|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]*)[_eEiInN]|[0-9]{4}-"
        r"|[0-9]+:[0-9_:.]*" + END + r")"
        r"|[&*!])")


def ambiguity(value: str) -> str | None:
    """The problem with a plain scalar of this text where the schema does not want a string,
    or None when YAML 1.1 and 1.2 read it alike."""
    m = _WHOLE.fullmatch(value)
    if m is None:
        return None
    kind = m.lastgroup or ""
    quote = f"quote it ('{value}') if you mean the text"
    if kind == "bool":
        advice = f"write true or false, or {quote}"
    elif kind in ("value", "timestamp"):
        advice = quote
    else:
        advice = f"write the number in plain decimal, or {quote}"
    return f"{value!r} is {_MEANING[kind]}: pask does not guess; {advice}"
