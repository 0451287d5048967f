"""The ``inet pask`` table through libnftables, JSON in and out.

pask owns this one table and replaces it whole in ONE transaction
(``add table; delete table; <content>``): the kernel commits all of it or
none, so a bad table leaves the old one in place and the packet path never
sees a half-built ruleset. No other table is ever named in a transaction.

Where the digest lives: nft 1.0.6 (Debian bookworm) reads and prints table
comments only in its text syntax; its JSON parser silently drops table,
chain and set comments and keeps rule comments. So the content digest is the
comment of the only rule of a dedicated, never-jumped-to chain ``digest``
(``return comment "<digest>"``), which works with every libnftables version.

The pure helpers (transaction, listing normalisation, digests) are shared
with the fake (fake_nft.py) so both compute observations the same way.
"""

from __future__ import annotations

import errno as _errno
import hashlib
import json
import os
import re
from typing import Any

from ..objects import NFT_FAMILY, NFT_TABLE, NftObserved, NftTable
from .base import BackendError

DIGEST_CHAIN = "digest"
_TABLE = {"family": NFT_FAMILY, "name": NFT_TABLE}


# -- pure helpers shared with the fake -------------------------------------------

def digest_commands(digest: str) -> list[dict]:
    t = {"family": NFT_FAMILY, "table": NFT_TABLE}
    return [
        {"add": {"chain": {**t, "name": DIGEST_CHAIN}}},
        {"add": {"rule": {**t, "chain": DIGEST_CHAIN, "expr": [{"return": None}], "comment": digest}}},
    ]


CONTENT_KINDS = ("table", "chain", "set", "map", "rule", "element", "ct helper")


def _shape_error(cmd: object) -> str | None:
    """Why ``cmd`` is not a command that builds part of ``inet pask``, or None."""
    if not isinstance(cmd, dict) or list(cmd) != ["add"] or not isinstance(cmd["add"], dict) \
            or len(cmd["add"]) != 1:
        return "expected {\"add\": {KIND: {...}}}"
    (kind, obj), = cmd["add"].items()
    if kind not in CONTENT_KINDS or not isinstance(obj, dict):
        return f"cannot add {kind!r} (pask adds {', '.join(CONTENT_KINDS)})"
    where = (obj.get("family"), obj.get("name") if kind == "table" else obj.get("table"))
    if where != (NFT_FAMILY, NFT_TABLE):
        return (f"names table {where[0]} {where[1]}; pask only owns {NFT_FAMILY} {NFT_TABLE} "
                "and never touches other tables")
    if kind not in ("table", "rule") and not obj.get("name"):
        return f"{kind} without a name"
    if DIGEST_CHAIN in (obj.get("name") if kind == "chain" else None, obj.get("chain")):
        return f"chain {DIGEST_CHAIN!r} is reserved for pask's content digest"
    if kind == "rule" and (not obj.get("chain") or not isinstance(obj.get("expr"), list)
                           or not obj["expr"]):
        return "rule needs a chain and a non-empty expr list"
    return None


def replace_commands(table: NftTable) -> list[dict]:
    """The one transaction that replaces ``inet pask`` with ``table``.

    ``add table`` first so that ``delete table`` cannot fail on a fresh host.
    Refuses, before anything reaches the kernel, content that is not plain
    ``add`` commands inside ``inet pask`` (libnftables would, for example,
    load a rule without statements, or change another table).
    """
    content = table.command_list()
    if not isinstance(content, list) or not content:
        raise BackendError("nft: table content must be a non-empty list of commands", _errno.EINVAL)
    for i, cmd in enumerate(content):
        why = _shape_error(cmd)
        if why:
            raise BackendError(f"nft: command {i}: {why}: {json.dumps(cmd)[:200]}",
                               _errno.EPERM if "other tables" in why else _errno.EINVAL)
    if "table" not in content[0]["add"]:
        raise BackendError("nft: command 0 must add table inet pask", _errno.EINVAL)
    return [{"add": {"table": dict(_TABLE)}}, {"delete": {"table": dict(_TABLE)}},
            *content, *digest_commands(table.digest)]


def delete_commands() -> list[dict]:
    """Idempotent delete: add (a no-op if present) then delete, one transaction."""
    return [{"add": {"table": dict(_TABLE)}}, {"delete": {"table": dict(_TABLE)}}]


def _sort_key(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


_ZEROED = ("packets", "bytes", "used")


def _zero(counter: Any) -> Any:
    if isinstance(counter, dict):
        return {k: (0 if k in _ZEROED else v) for k, v in counter.items()}
    return counter


def _stmt(stmt: Any) -> Any:
    if not isinstance(stmt, dict):
        return stmt
    if "counter" in stmt:
        return {**stmt, "counter": _zero(stmt["counter"])}
    match = stmt.get("match")
    if isinstance(match, dict) and isinstance(match.get("right"), dict) \
            and isinstance(match["right"].get("set"), list):
        right = {**match["right"], "set": sorted(match["right"]["set"], key=_sort_key)}
        return {"match": {**match, "right": right}}
    return stmt


def _object(obj: dict) -> dict:
    """Drop what changes without a configuration change (handles, counter
    values) and order that carries no meaning (set elements: a hash set lists
    them in its random-seeded hash order, different on every load)."""
    out = {}
    for kind, body in obj.items():
        if not isinstance(body, dict):
            out[kind] = body
            continue
        body = {k: v for k, v in body.items() if k != "handle"}
        if isinstance(body.get("elem"), list):
            body["elem"] = sorted(body["elem"], key=_sort_key)
        if isinstance(body.get("expr"), list):
            body["expr"] = [_stmt(x) for x in body["expr"]]
        if kind in ("counter", "quota"):
            body = _zero(body)
        out[kind] = body
    return out


def normalise_listing(objects: list[dict]) -> list[dict]:
    """The kernel's JSON listing of the table, stable across runs and reloads."""
    return [_object(o) for o in objects if "metainfo" not in o]


def listing_digest(objects: list[dict]) -> str:
    text = json.dumps(normalise_listing(objects), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def comment_of(objects: list[dict]) -> str:
    """pask's content digest as stored in the listing, "" if the table has none."""
    for o in objects:
        rule = o.get("rule")
        if rule and rule.get("chain") == DIGEST_CHAIN and rule.get("comment"):
            return str(rule["comment"])
    return ""


def observed_from_listing(objects: list[dict]) -> NftObserved:
    return NftObserved(comment_of(objects), listing_digest(objects))


_LOCATION = re.compile(r"^\S*:\d+:\d+-\d+: ")
_STRERRORS = sorted(((os.strerror(e), e) for e in (
    _errno.ENOENT, _errno.EEXIST, _errno.EINVAL, _errno.EOPNOTSUPP, _errno.EBUSY, _errno.ENOMEM,
    _errno.EPERM, _errno.ENOSPC, _errno.E2BIG, _errno.ERANGE, _errno.EAGAIN, _errno.ELOOP,
    _errno.ENOBUFS, _errno.EINTR, _errno.EMLINK, _errno.EAFNOSUPPORT, _errno.EPROTONOSUPPORT, _errno.ENOTDIR)),
    key=lambda t: -len(t[0]))


def error_from_nft(text: str, what: str) -> BackendError:
    """nft's own message (location prefix dropped, echoed input cut short),
    with the errno it names; input nft refuses to parse is EINVAL."""
    lines = [_LOCATION.sub("", ln).strip() for ln in text.strip().splitlines()]
    lines = [ln if len(ln) <= 240 else ln[:240] + "..." for ln in lines
             if ln and not set(ln) <= set("^~ ")]
    msg = "; ".join(lines)
    if len(msg) > 2000:
        msg = msg[:2000] + "..."
    code = next((e for s, e in _STRERRORS if s in msg), 0)
    if not code:
        code = _errno.EEXIST if "conflicting intervals" in msg else _errno.EINVAL
    return BackendError(f"nft {what}: {msg or 'failed'}", code)


# -- the real backend -----------------------------------------------------------------

class NftLib:
    """NftBackend over libnftables (python ``nftables`` module, imported lazily)."""

    def __init__(self) -> None:
        self._nft: Any = None

    def _lib(self) -> Any:
        if self._nft is None:
            import nftables  # lazy: only the backend needs it

            self._nft = nftables.Nftables()
        return self._nft

    def _run(self, cmds: list[dict], what: str, dry_run: bool = False) -> Any:
        nft = self._lib()
        if dry_run:
            _set_dry_run(nft, True)
        try:
            rc, out, err = nft.json_cmd({"nftables": cmds})
        finally:
            if dry_run:
                _set_dry_run(nft, False)
        if rc != 0:
            raise error_from_nft(err, what)
        return out

    def listing(self) -> list[dict] | None:
        """The kernel's JSON listing of ``inet pask`` (None if absent)."""
        try:
            out = self._run([{"list": {"table": dict(_TABLE)}}], "list")
        except BackendError as e:
            if e.errno == _errno.ENOENT:
                return None
            raise
        return list(out.get("nftables", [])) if out else []

    def observe(self) -> NftObserved | None:
        objects = self.listing()
        return None if objects is None else observed_from_listing(objects)

    def check(self, table: NftTable) -> None:
        self._run(replace_commands(table), "check", dry_run=True)

    def replace(self, table: NftTable) -> NftObserved:
        self._run(replace_commands(table), "replace")
        seen = self.observe()
        if seen is None:
            raise BackendError("nft replace: table inet pask missing right after loading it",
                               _errno.ENOENT)
        return seen

    def delete(self) -> None:
        self._run(delete_commands(), "delete")


def _set_dry_run(nft: Any, on: bool) -> None:
    """pip-nftables 1.0.2 lacks set_dry_run; libnftables has had it for years."""
    if hasattr(nft, "set_dry_run"):
        nft.set_dry_run(on)
        return
    import ctypes

    lib = ctypes.CDLL("libnftables.so.1")
    lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
    lib.nft_ctx_set_dry_run.restype = None
    lib.nft_ctx_set_dry_run(nft._Nftables__ctx, on)
