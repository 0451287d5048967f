"""Validated configs kept between runs, so an unchanged or slightly changed big file is not parsed again.

Parsing and validating YAML is most of a pask-apply run at 1024 x 32
(docs/performance.md), and most runs see the file of the previous run, or
that file with one service edited.  The cache remembers, next to the state
file, the model of every ``services:`` item by the digest of its text:

* the same file (same bytes, same pask code): its model, nothing parsed;
* some items edited: only those items are parsed and validated, the rest
  come from the cache; the rules that relate services (unique names, VIP +
  port + protocol, fwmarks) are checked again over the whole list;
* anything unusual (anchors, tags, block scalars, flow-style ``services``,
  tabs, a problem in the file): the ordinary full load (``load.load_config``),
  whose errors carry exact lines.  The cache never reports a problem itself.

Every model in the cache went through the full checks once.  The cache is a
pickle: it is read only when it belongs to this user and nobody else can
write it, and a cache that cannot be read or written is just not used.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from .. import __version__

from ..errors import ConfigError

if TYPE_CHECKING:      # the model's dataclasses cost an import the no-op fast path skips
    from ..model import Config, Service

CACHE_NAME = "config-cache.pickle"
FORMAT = 2
FULL_PARSE_SHARE = 8       # more than 1/8 of the items new: -v says 'full' (they are parsed in batches)
BATCH = 64                 # new items parsed, validated and modelled together (memory of one small load)
PARALLEL_MIN = 256         # this many new items or more: some parsed in a forked child
CHILD_SHARE = 45           # percent of them: the child also pickles its models, the parent unpickles them

# YAML features a line-based split cannot follow safely: anchors/aliases, tags,
# block scalars, directives, tabs, CR line ends, document markers, a BOM.
_UNSAFE_CHARS = ("&", "*", "!", "|", ">", "%", "\t", "\r", "\ufeff")
# Patterns start with a literal "\n" (the text is searched with one put in front):
# re then skips to each newline at C speed, where "^" with re.M tries every position.
# Compiled on first use: the no-op fast path never splits a file.
@functools.cache
def _patterns() -> dict[str, "re.Pattern[str]"]:
    return {
        "doc_marker": re.compile(r"\n(?:---|\.\.\.)(?:[ \n]|$)"),
        "services_key": re.compile(r"\nservices:[ ]*(?:#[^\n]*)?(?=\n|$)"),
        "first_item": re.compile(r"\n( *)- "),
        "top_level": re.compile(r"\n[^ \n#]"),
        "top_level_not_item": re.compile(r"\n(?!- )[^ \n#]"),
        "blank_or_comment": re.compile(r"(?:\n[ ]*(?:#[^\n]*)?)*"),
    }


def cache_file_for(state_file: str) -> str:
    """The cache lives beside the state file (/var/lib/pask/config-cache.pickle)."""
    return os.path.join(os.path.dirname(os.path.abspath(state_file)), CACHE_NAME)


def code_digest() -> bytes:
    """pask's own code and data, every file of the package (name, size, mtime): what a
    config means, and the plan made from it, change with any of them. Stat, not read:
    reading ~60 files costs a third of a second under emulation, stat a fifth of that."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # pask_ipvs/
        h = hashlib.blake2b(f"{FORMAT} {__version__} {sys.version}".encode(), digest_size=32)
        for top, dirs, files in sorted(os.walk(here, followlinks=True)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith((".py", ".json")):
                    path = os.path.join(top, name)
                    st = os.stat(path)
                    h.update(f"{os.path.relpath(path, here)} {st.st_size} {st.st_mtime_ns}\n".encode())
        _CODE_DIGEST = h.digest()
    return _CODE_DIGEST


_CODE_DIGEST: bytes | None = None


def split_services(text: str) -> tuple[str, list[str]] | None:
    """(the file without its ``services:`` block, the text of each item), or None
    when the file uses YAML a line split cannot follow (then: a full load).

    Each item's text keeps its indentation, so it parses alone exactly as it
    does inside the file: a block sequence at that indentation."""
    if any(c in text for c in _UNSAFE_CHARS):
        return None
    t = "\n" + text                      # every line, the first too, follows a "\n"
    pat = _patterns()
    if pat["doc_marker"].search(t):
        return None
    keys = list(pat["services_key"].finditer(t))
    if len(keys) != 1:
        return None
    begin = keys[0].end()
    first = pat["first_item"].search(t, begin)
    if first is None or not pat["blank_or_comment"].fullmatch(t, begin, first.start()):
        return None
    indent = len(first.group(1))
    # the block ends at the next top-level key (items at column 0: at the next line
    # at column 0 that is not an item)
    found = pat["top_level_not_item" if indent == 0 else "top_level"].search(t, first.start())
    end = found.start() if found else len(t)
    block = t[first.start():end]          # "\n  - name: ...\n    vip: ...\n  - ..."
    # inside the block, no line starts left of the items, nor at their column
    # unless it starts an item
    if indent and re.search(rf"\n {{0,{indent - 1}}}[^ \n#]|\n {{{indent}}}(?!- )[^ \n#]", block):
        return None
    starts = [m.start() + 1 for m in re.finditer(rf"\n {{{indent}}}- ", block)]
    items = [block[a:b] for a, b in zip(starts, starts[1:] + [len(block)])]
    items = [item if item.endswith("\n") else item + "\n" for item in items]
    head = t[1:keys[0].start() + 1] + t[end + 1:]
    return head, items


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class ConfigCache:
    """``load(path)`` -> Config, from the cache where it can; ``save()`` keeps what was learnt.

    ``how`` says what happened (for ``-v``): 'cached', 'N of M services parsed', 'full'."""

    def __init__(self, cache_file: str | None):
        self.cache_file = cache_file
        self.how = ""
        self._learnt: tuple | None = None     # what save() writes: see _remember
        self._saving = None                   # a forked child writing it (save_begin)
        # What this process loaded last: a daemon that reloads (pask-healthd on SIGHUP)
        # reuses the models of unchanged items as they are, without reading the file.
        self._live: dict[bytes, Service] = {}
        self._live_file: tuple[bytes, Config] | None = None

    # -- reading -----------------------------------------------------------------
    def _read(self) -> dict | None:
        import pickle
        if not self.cache_file:
            return None
        try:
            with open(self.cache_file, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                    return None                   # not ours alone: never unpickle it
                entry = pickle.load(f)
        except Exception:                         # missing, unreadable, truncated, old format
            return None
        if not isinstance(entry, dict) or entry.get("format") != FORMAT:
            return None
        return entry

    def _read_current(self, code: bytes) -> dict | None:
        """The file cache, if it was written by this very code."""
        old = self._read()
        return old if old is not None and old.get("code") == code else None

    def load(self, path: str, text: str | None = None) -> Config:
        from ..config_file import read_config_text
        from ..load import load_config

        if text is None:
            text = read_config_text(path)
        code = code_digest()
        file_digest = hashlib.blake2b(code + text.encode(), digest_size=32).digest()
        if self._live_file is not None and self._live_file[0] == file_digest \
                and self._live_file[1].source == path:
            self.how = "cached"
            return self._live_file[1]
        live = self._live
        # A fresh process reads the file cache first: the same file needs no split.
        old = self._read_current(code) if not live else None
        if old is not None and old.get("file") == file_digest:
            config = _from_entry(old, path)
            if config is not None:
                self.how = "cached"
                return self._keep(file_digest, config, old.get("order"))
        split = split_services(text)
        digests = None if split is None else [_digest(item) for item in split[1]]
        if old is None and live and (digests is None or any(d not in live for d in digests)):
            old = self._read_current(code)       # a daemon: the file cache for what it lacks
        if split is None:
            self.how = "full"
            config = load_config(path, text)
            self._remember(code, file_digest, config, None)
            return self._keep(file_digest, config, None)
        assert digests is not None
        head, items = split
        known: dict[bytes, bytes] = old.get("chunks", {}) if old is not None else {}
        missing = sum(1 for d in digests if d not in live and d not in known)
        # Many new items (a cold start): parsed in batches all the same, so the file's plain
        # data (some 10x the text at 1024 x 32) is never in memory whole. Any doubt: the full
        # load, which also gives every problem its line.
        config = _load_items(path, head, items, digests, known, live)
        if config is None:
            self.how = "full"
            config = load_config(path, text)
            if not _aligned(config, items):          # the split disagrees: keep the file whole
                self._remember(code, file_digest, config, None)
                return self._keep(file_digest, config, None)
        elif missing * FULL_PARSE_SHARE <= len(items) or missing <= 1:
            self.how = f"{missing} of {len(items)} services parsed"
        else:
            self.how = "full"
        self._remember(code, file_digest, config, digests, known)
        return self._keep(file_digest, config, digests)

    def _keep(self, file_digest: bytes, config: Config, digests: list[bytes] | None) -> Config:
        """Remember this load in memory for the next load() of this process."""
        self._live_file = (file_digest, config)
        self._live = dict(zip(digests, config.services)) \
            if digests is not None and len(digests) == len(config.services) else {}
        return config

    # -- writing -----------------------------------------------------------------
    def _remember(self, code: bytes, file_digest: bytes, config: Config,
                  digests: list[bytes] | None, known: dict[bytes, bytes] | None = None) -> None:
        """Keep what save() needs; pickling waits for save(), which only a run about to
        apply calls (not a dry run, not one whose config or plan failed)."""
        self._learnt = (code, file_digest, config, digests, known or {})

    def save_begin(self) -> None:
        """Start writing the cache: in a forked child when much is new to pickle (a cold
        load: from PARALLEL_MIN items), so it runs beside the caller's next steps; else
        nothing yet. save_end() finishes it, save_drop() forgets it."""
        from .. import forked

        self._saving = None
        if self._learnt is not None and self.cache_file and self._unpickled() >= PARALLEL_MIN:
            self._saving = forked.start(self.save)

    def save_end(self) -> bool:
        """save(), or the answer of the child save_begin() started (save() here when the
        child failed); False when the cache could not be written."""
        from .. import forked

        child, self._saving = self._saving, None
        if child is not None:
            try:
                written = child.result()
            except forked.ChildFailed:
                return self.save()
            self._learnt = None
            return bool(written)
        return self.save()

    def save_drop(self) -> None:
        """The run ends without applying: nothing more is written (a child already writing
        the cache of this valid config is ended)."""
        child, self._saving = self._saving, None
        if child is not None:
            child.abandon()
        self._learnt = None

    def _unpickled(self) -> int:
        """How many services save() would pickle (the cache's own and a child's kept as
        they are)."""
        assert self._learnt is not None
        _, _, config, digests, known = self._learnt
        if digests is None:
            return len(config.services)
        return sum(1 for digest in digests if digest not in known)

    def save(self) -> bool:
        """Write the cache if this run learnt something; False when it could not be written."""
        if self._learnt is None or not self.cache_file:
            return True
        import pickle

        from ..atomic_file import write_atomic
        code, file_digest, config, digests, known = self._learnt
        entry: dict = {"format": FORMAT, "code": code, "file": file_digest,
                       "head": pickle.dumps(replace(config, services=(), source=""),
                                            pickle.HIGHEST_PROTOCOL)}
        if digests is None:
            entry["config"] = pickle.dumps(config.services, pickle.HIGHEST_PROTOCOL)
        else:
            entry["order"] = digests
            entry["chunks"] = {
                digest: known.get(digest) or pickle.dumps(svc, pickle.HIGHEST_PROTOCOL)
                for digest, svc in zip(digests, config.services)}
        try:
            write_atomic(self.cache_file, pickle.dumps(entry, pickle.HIGHEST_PROTOCOL),
                         dir_mode=0o700)
        except OSError:
            return False
        self._learnt = None
        return True


def _from_entry(entry: dict, path: str) -> Config | None:
    import pickle
    from ..model import Config

    try:
        if "config" in entry:
            services = pickle.loads(entry["config"])
        else:
            chunks = entry["chunks"]
            services = tuple(pickle.loads(chunks[d]) for d in entry["order"])
        head = pickle.loads(entry["head"])
        if not isinstance(head, Config):
            return None
    except Exception:
        return None
    return replace(head, services=services, source=path)


def _load_items(path: str, head: str, items: list[str], digests: list[bytes],
                known: dict[bytes, bytes], live: dict[bytes, Service]) -> Config | None:
    """The config from this process's models (``live``), the cached items (``known``,
    pickled) and the new items, parsed alone; None on any doubt. Many new items (a cold
    start) are parsed half in a forked child (forked.py), whose pickled models also go
    into ``known``: the cache keeps them as they are."""
    import pickle
    from .. import forked
    from ..errors import NO_LINES
    from ..load import gc_paused
    from ..model import build_model
    from ..validate import validate
    from ..yaml_fast import read_fast

    with gc_paused():
        head_data = read_fast(head)          # None: something only the full load may judge
        if not isinstance(head_data, dict) or "services" in head_data:
            return None
        if "ha" in head_data:   # ha's rules tie each VIP to the head: items cached under another head may break them
            return None
        if "bgp" in head_data:  # as ha: bgp's rules tie each service's mode and scheduler to the head
            return None
        head_doc = {**head_data, "services": []}
        if validate(head_doc, NO_LINES, path):
            return None
        services: list[Service | None] = []
        for digest in digests:
            svc = live.get(digest)
            if svc is None:
                blob = known.get(digest)
                if blob is not None:
                    try:
                        svc = pickle.loads(blob)
                    except Exception:
                        return None
            services.append(svc)
        new = [i for i, svc in enumerate(services) if svc is None]
        child = None
        if len(new) >= PARALLEL_MIN:
            cut = len(new) - len(new) * CHILD_SHARE // 100
            theirs, new = new[cut:], new[:cut]
            child = forked.start(_parse_pickled, path, head_data, [items[i] for i in theirs])
            if child is None:
                new += theirs
        try:
            mine = _parse(path, head_data, [items[i] for i in new])
        except BaseException:
            if child is not None:
                child.abandon()
            raise
        if mine is None:                     # the full load judges: the child's share is moot
            if child is not None:
                child.abandon()
            return None
        for i, svc in zip(new, mine):
            services[i] = svc
        if child is not None:
            try:
                blobs = child.result()
            except forked.ChildFailed:
                blobs = _parse_pickled(path, head_data, [items[i] for i in theirs])
            if blobs is None:
                return None
            for i, blob in zip(theirs, blobs):
                services[i] = pickle.loads(blob)
                known[digests[i]] = blob
    if not _services_agree(services):     # type: ignore[arg-type]
        return None
    return replace(build_model(head_doc, path), services=tuple(services))


def _parse(path: str, head_data: dict, texts: list[str]) -> list[Service] | None:
    """The models of these items, parsed ``BATCH`` at a time (each batch read as one block
    sequence, validated with the head, modelled, its data dropped); None on any doubt."""
    from ..errors import NO_LINES
    from ..model import build_service
    from ..validate import validate
    from ..yaml_fast import read_fast

    out: list[Service] = []
    for at in range(0, len(texts), BATCH):
        batch = texts[at:at + BATCH]
        data = read_fast("".join(batch))
        if not isinstance(data, list) or len(data) != len(batch) or \
                not all(isinstance(item, dict) for item in data):
            return None
        if validate({**head_data, "services": data}, NO_LINES, path):
            return None
        out += [build_service(raw) for raw in data]
    return out


def _parse_pickled(path: str, head_data: dict, texts: list[str]) -> list[bytes] | None:
    """_parse, each model pickled as the cache keeps it (a child's share)."""
    import pickle

    from ..load import gc_paused

    with gc_paused():
        models = _parse(path, head_data, texts)
        if models is None:
            return None
        return [pickle.dumps(svc, pickle.HIGHEST_PROTOCOL) for svc in models]


def _aligned(config: Config, items: list[str]) -> bool:
    """Item i of the split is service i of the full load (a cheap cross-check of the split)."""
    return len(config.services) == len(items) and all(
        svc.name in item for svc, item in zip(config.services, items))


def _services_agree(services: list[Service]) -> bool:
    """The rules between services (validate.service_clashes), on the models."""
    from ..validate import service_clashes

    rows = [(s.name, None if s.filters else (s.vip, s.port, s.protocol), s.fwmark) for s in services]
    return next(service_clashes(rows), None) is None
