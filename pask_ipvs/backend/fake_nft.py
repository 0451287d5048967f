"""An in-memory ``inet pask`` that behaves like libnftables + the kernel.

Same protocol as NftLib, same transaction (``replace_commands``), same
observation (``observed_from_listing`` over a kernel-style JSON listing), so
code above the backend cannot tell them apart:

* a transaction is all or nothing: it runs on a copy, the copy is committed
  only when every command succeeded;
* it refuses what nft 1.0.6 refuses (measured in a netns), with nft's message
  and errno: rule in a missing chain / jump to a missing chain / missing
  ``@set`` (ENOENT), a set redeclared with another type or a map key given
  two values (EEXIST), NAT outside a nat chain or a base chain redefined
  (EOPNOTSUPP), a jump loop (EMLINK), bad addresses, protocols, ports,
  concatenation arity, prefixes without ``flags interval``, overlapping
  intervals, unknown statements (EINVAL / EEXIST);
* tables other than ``inet pask`` live in ``other_tables`` and nothing here
  ever writes them.

The listing digest is computed the same way as the real one but over the
fake's own listing, so its *values* differ from the kernel's (the kernel
rewrites expressions: ``meta l4proto tcp th dport`` lists as ``tcp dport``);
what agrees is the behaviour: equal content, equal digest; hand edit, new digest.
"""

from __future__ import annotations

import copy
import errno as _errno
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from ..objects import NFT_FAMILY, NFT_TABLE, NftObserved, NftTable
from .base import BackendError
from .nft import delete_commands, observed_from_listing, replace_commands

_BASE_TYPES = {"filter", "nat", "route"}
_HOOKS = {"prerouting", "input", "forward", "output", "postrouting", "ingress"}
_NAT_HOOKS = {"prerouting", "input", "output", "postrouting"}
_NAT_STMTS = {"snat", "dnat", "masquerade", "redirect"}
_VERDICTS = {"accept", "drop", "return", "continue"}
_STATEMENTS = _NAT_STMTS | _VERDICTS | {
    "match", "counter", "mangle", "jump", "goto", "vmap", "log", "limit", "meta", "ct",
    "notrack", "reject", "set", "map", "queue", "quota", "fwd", "dup", "xt", "ct helper",
}
# conntrack helpers a `ct helper` object can name (nf_conntrack_*), with their protocols
_CT_HELPERS = {"ftp": {"tcp"}, "tftp": {"udp"}, "Q.931": {"tcp"}, "RAS": {"udp"}, "H.245": {"tcp"},
               "sip": {"tcp", "udp"}, "irc": {"tcp"}, "amanda": {"udp"}, "pptp": {"tcp"},
               "snmp": {"udp"}, "netbios-ns": {"udp"}, "sane": {"tcp"}}
_PROTOS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58, "dccp": 33, "udplite": 136,
           "gre": 47, "esp": 50, "ah": 51}
_TYPES = {"ipv4_addr", "ipv6_addr", "mark", "inet_proto", "inet_service", "verdict",
          "ifname", "ether_addr", "ct_state", "nf_proto", "ct_label", "integer"}


def _err(msg: str, code: int) -> BackendError:
    return BackendError(f"Error: {msg}", code)


@dataclass
class _Set:
    kind: str                    # "set" | "map"
    obj: dict                    # as added, without elem
    elems: list = field(default_factory=list)
    handle: int = 0


@dataclass
class _Chain:
    obj: dict
    rules: list[dict] = field(default_factory=list)   # {"expr", "comment"?, "handle", counters}
    handle: int = 0

    @property
    def base(self) -> bool:
        return "hook" in self.obj


@dataclass
class _Table:
    handle: int
    chains: dict[str, _Chain] = field(default_factory=dict)
    sets: dict[str, _Set] = field(default_factory=dict)
    helpers: dict[str, dict] = field(default_factory=dict)      # ct helper objects, with handle


class FakeNft:
    """NftBackend in memory. Test helpers: ``tamper``, ``bump_counters``,
    ``fail_next``, ``replace_count``, ``check_count``, ``other_tables``."""

    def __init__(self, other_tables: dict[tuple[str, str], Any] | None = None) -> None:
        self.table: _Table | None = None
        self.other_tables: dict[tuple[str, str], Any] = dict(other_tables or {})
        self.replace_count = 0
        self.check_count = 0
        self.fail_next: BackendError | None = None   # raised (once) by the next replace
        self._handle = 0

    # -- NftBackend ------------------------------------------------------------
    def observe(self) -> NftObserved | None:
        return None if self.table is None else observed_from_listing(self._listing())

    def check(self, table: NftTable) -> None:
        self.check_count += 1
        self._transaction(replace_commands(table), "check")

    def replace(self, table: NftTable) -> NftObserved:
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err
        self.table, self._handle = self._transaction(replace_commands(table), "replace")
        self.replace_count += 1
        seen = self.observe()
        assert seen is not None
        return seen

    def delete(self) -> None:
        self.table, self._handle = self._transaction(delete_commands(), "delete")

    # -- test helpers ----------------------------------------------------------
    def tamper(self, chain: str | None = None, expr: list[dict] | None = None) -> None:
        """A hand edit (``nft add rule inet pask CHAIN accept``): the listing
        changes, pask's digest comment does not."""
        if self.table is None:
            raise _err("No such file or directory", _errno.ENOENT)
        name = chain or next(iter(self.table.chains))
        self._handle += 1
        self.table.chains[name].rules.append(
            {"expr": copy.deepcopy(expr or [{"accept": None}]), "handle": self._handle})

    def bump_counters(self, packets: int = 1, size: int = 60) -> None:
        """Traffic: every rule counter moves (the listing digest must not)."""
        for chain in (self.table.chains.values() if self.table else ()):
            for rule in chain.rules:
                for stmt in rule["expr"]:
                    if isinstance(stmt, dict) and "counter" in stmt:
                        c = stmt["counter"] or {"packets": 0, "bytes": 0}
                        stmt["counter"] = {"packets": c["packets"] + packets,
                                           "bytes": c["bytes"] + packets * size}

    def listing(self) -> list[dict]:
        """``nft -j list table inet pask`` as the kernel would shape it (a copy)."""
        return json.loads(json.dumps(self._listing()))

    def _listing(self) -> list[dict]:
        t = self.table
        if t is None:
            return []
        out: list[dict] = [{"metainfo": {"version": "fake", "json_schema_version": 1}},
                           {"table": {"family": NFT_FAMILY, "name": NFT_TABLE, "handle": t.handle}}]
        for h in t.helpers.values():
            out.append({"ct helper": dict(h)})
        for name, s in t.sets.items():
            body = {**s.obj, "handle": s.handle}
            if s.elems:
                body["elem"] = s.elems
            out.append({s.kind: body})
        for c in t.chains.values():
            out.append({"chain": {**c.obj, "handle": c.handle}})
        for cname, c in t.chains.items():
            for r in c.rules:
                body = {"family": NFT_FAMILY, "table": NFT_TABLE, "chain": cname,
                        "handle": r["handle"], "expr": r["expr"]}
                if r.get("comment"):
                    body["comment"] = r["comment"]
                out.append({"rule": body})
        return out

    # -- the transaction ---------------------------------------------------------
    def _transaction(self, cmds: list[dict], what: str) -> tuple[_Table | None, int]:
        """Run ``cmds`` on a copy; return the copy only if all succeeded."""
        start = self.table
        if cmds[:2] == delete_commands():
            # add + delete table: whatever was there is gone; skip copying it.
            start, cmds = None, cmds[2:]
        tx = _Tx(copy.deepcopy(start), self._handle)
        try:
            for cmd in cmds:
                tx.run(cmd)
            tx.validate()
        except BackendError as e:
            raise BackendError(f"nft {what}: {e}", e.errno) from None
        return tx.table, tx.handle


class _Tx:
    def __init__(self, table: _Table | None, handle: int) -> None:
        self.table = table
        self.handle = handle

    def _next(self) -> int:
        self.handle += 1
        return self.handle

    def _need_table(self) -> _Table:
        if self.table is None:
            raise _err("No such file or directory", _errno.ENOENT)
        return self.table

    def run(self, cmd: dict) -> None:
        (verb, body), = cmd.items()
        (kind, obj), = body.items()
        if verb == "delete" and kind == "table":
            self._need_table()
            self.table = None
        elif verb == "add" and kind == "table":
            if self.table is None:
                self.table = _Table(self._next())
        elif verb == "add" and kind == "chain":
            self._add_chain(obj)
        elif verb == "add" and kind in ("set", "map"):
            self._add_set(kind, obj)
        elif verb == "add" and kind == "element":
            s = self._need_table().sets.get(obj.get("name", ""))
            if s is None:
                raise _err("No such file or directory", _errno.ENOENT)
            self._add_elems(s, obj.get("elem", []))
        elif verb == "add" and kind == "rule":
            self._add_rule(obj)
        elif verb == "add" and kind == "ct helper":
            self._add_ct_helper(obj)
        else:
            raise _err(f"Unknown command '{verb} {kind}'", _errno.EINVAL)

    def _add_chain(self, obj: dict) -> None:
        t = self._need_table()
        base = {k: obj[k] for k in ("type", "hook", "prio", "policy") if k in obj}
        if base:
            if not {"type", "hook", "prio"} <= set(base):
                raise _err("Invalid base chain: type, hook and prio go together", _errno.EINVAL)
            if base["hook"] not in _HOOKS:
                raise _err(f"Invalid chain hook '{base['hook']}'.", _errno.EINVAL)
            if base["type"] not in _BASE_TYPES:
                raise _err(f"unknown chain type '{base['type']}'", _errno.EINVAL)
            if base["type"] == "nat" and base["hook"] not in _NAT_HOOKS:
                raise _err("Could not process rule: Operation not supported", _errno.EOPNOTSUPP)
            if not isinstance(base["prio"], int):
                raise _err(f"invalid priority {base['prio']!r}", _errno.EINVAL)
            if base.get("policy", "accept") not in ("accept", "drop"):
                raise _err(f"Unknown policy '{base['policy']}'", _errno.EINVAL)
        name = obj["name"]
        clean = {"family": NFT_FAMILY, "table": NFT_TABLE, "name": name, **base}
        have = t.chains.get(name)
        if have is not None:
            if base and {k: have.obj.get(k) for k in base} != base:
                raise _err("Could not process rule: Operation not supported", _errno.EOPNOTSUPP)
            return
        t.chains[name] = _Chain(clean, handle=self._next())

    def _add_ct_helper(self, obj: dict) -> None:
        t = self._need_table()
        for item in ("name", "type", "protocol"):
            if item not in obj:
                raise _err(f"Object item not found: {item}", _errno.EINVAL)
        protos = _CT_HELPERS.get(obj["type"])
        if protos is None:       # the kernel finds no helper of that name: nft says ENOENT
            raise _err("Could not process rule: No such file or directory", _errno.ENOENT)
        if obj["protocol"] not in protos:
            raise _err("Could not process rule: No such file or directory", _errno.ENOENT)
        if obj.get("l3proto", "inet") not in ("ip", "ip6", "inet"):
            raise _err(f"Invalid l3proto '{obj['l3proto']}'", _errno.EINVAL)
        clean = {"family": NFT_FAMILY, "name": obj["name"], "table": NFT_TABLE,
                 "type": obj["type"], "protocol": obj["protocol"], "l3proto": obj.get("l3proto", "inet")}
        have = t.helpers.get(obj["name"])
        if have is not None:
            if {k: have[k] for k in clean} != clean:
                raise _err("Could not process rule: File exists", _errno.EEXIST)
            return
        t.helpers[obj["name"]] = {**clean, "handle": self._next()}

    def _add_set(self, kind: str, obj: dict) -> None:
        t = self._need_table()
        if "type" not in obj:
            raise _err("Object item not found: type", _errno.EINVAL)
        if kind == "map" and "map" not in obj:
            raise _err("Object item not found: map", _errno.EINVAL)
        types = obj["type"] if isinstance(obj["type"], list) else [obj["type"]]
        for ty in types + ([obj["map"]] if kind == "map" else []):
            if ty not in _TYPES:
                raise _err(f"Invalid set type '{ty}'", _errno.EINVAL)
        flags = obj.get("flags", [])
        flags = [flags] if isinstance(flags, str) else list(flags)
        clean = {k: v for k, v in obj.items() if k != "elem"}
        clean.update(family=NFT_FAMILY, table=NFT_TABLE)
        if flags:
            clean["flags"] = flags
        have = t.sets.get(obj["name"])
        if have is not None:
            if have.kind != kind or have.obj.get("type") != obj["type"] or have.obj.get("map") != obj.get("map"):
                raise _err("Could not process rule: File exists", _errno.EEXIST)
        else:
            have = t.sets[obj["name"]] = _Set(kind, clean, handle=self._next())
        self._add_elems(have, obj.get("elem", []))

    # -- values --------------------------------------------------------------
    def _value(self, ty: str, v: Any, interval: bool) -> tuple[int, int]:
        """Check ``v`` against datatype ``ty``; return it as an int range (for overlap checks)."""
        if isinstance(v, dict) and "range" in v and ty != "verdict":
            lo, hi = (self._value(ty, x, False) for x in v["range"])
            if not interval:
                raise _err("You must add 'flags interval' to your set declaration if you want "
                           "to add range elements", _errno.EINVAL)
            return lo[0], hi[1]
        if ty in ("ipv4_addr", "ipv6_addr"):
            version = 4 if ty == "ipv4_addr" else 6
            if isinstance(v, dict) and "prefix" in v:
                if not interval:
                    raise _err("You must add 'flags interval' to your set declaration if you want "
                               "to add prefix elements", _errno.EINVAL)
                net = _net(f"{v['prefix'].get('addr')}/{v['prefix'].get('len')}", version)
                return int(net.network_address), int(net.broadcast_address)
            net = _net(str(v), version)
            return int(net.network_address), int(net.broadcast_address)
        if ty == "mark" or ty == "integer":
            n = _int(v, 0xFFFFFFFF, "Value out of range")
            return n, n
        if ty == "inet_service":
            n = _int(v, 0xFFFF, "Service out of range")
            return n, n
        if ty == "inet_proto":
            if isinstance(v, str) and v in _PROTOS:
                return _PROTOS[v], _PROTOS[v]
            if isinstance(v, int) and 0 <= v <= 255:
                return v, v
            raise _err("Could not resolve protocol name", _errno.EINVAL)
        if ty == "verdict":
            self._verdict(v)
            return 0, 0
        return 0, 0

    def _verdict(self, v: Any) -> None:
        if not isinstance(v, dict) or len(v) != 1:
            raise _err(f"invalid verdict {v!r}", _errno.EINVAL)
        (k, arg), = v.items()
        if k in ("jump", "goto"):
            target = arg.get("target") if isinstance(arg, dict) else None
            if target not in self._need_table().chains:
                raise _err("Could not process rule: No such file or directory", _errno.ENOENT)
        elif k not in _VERDICTS:
            raise _err(f"invalid verdict {v!r}", _errno.EINVAL)

    def _key(self, s: _Set, key: Any) -> tuple[tuple[int, int], ...]:
        types = s.obj["type"] if isinstance(s.obj["type"], list) else [s.obj["type"]]
        interval = "interval" in s.obj.get("flags", [])
        if len(types) > 1:
            parts = key.get("concat") if isinstance(key, dict) else None
            if not isinstance(parts, list) or len(parts) != len(types):
                raise _err("invalid data type, expected concatenation of "
                           f"({', '.join(types)})", _errno.EINVAL)
        else:
            parts = [key]
        return tuple(self._value(ty, p, interval) for ty, p in zip(types, parts))

    def _add_elems(self, s: _Set, elems: list) -> None:
        interval = "interval" in s.obj.get("flags", [])
        have = {}
        for e in s.elems:
            have[self._key(s, e[0] if s.kind == "map" else e)] = e
        for e in elems:
            if s.kind == "map":
                if not isinstance(e, list) or len(e) != 2:
                    raise _err("map element must be [key, value]", _errno.EINVAL)
                key = self._key(s, e[0])
                self._value(s.obj["map"], e[1], False)
            else:
                key = self._key(s, e)
            if key in have:
                if s.kind == "map" and have[key][1] != e[1]:
                    raise _err("Could not process rule: File exists", _errno.EEXIST)
                continue
            if interval and any(all(a[0] <= b[1] and b[0] <= a[1] for a, b in zip(key, k))
                                for k in have):
                raise _err("conflicting intervals specified", _errno.EEXIST)
            have[key] = e
            s.elems.append(e)

    # -- rules ---------------------------------------------------------------
    def _add_rule(self, obj: dict) -> None:
        t = self._need_table()
        chain = t.chains.get(obj["chain"])
        if chain is None:
            raise _err("No such file or directory", _errno.ENOENT)
        expr = obj["expr"]          # the transaction's own objects (fresh from json)
        for i, stmt in enumerate(expr):
            if not isinstance(stmt, dict) or len(stmt) != 1:
                raise _err(f"Parsing expr array at index {i} failed.", _errno.EINVAL)
            (k, arg), = stmt.items()
            if k not in _STATEMENTS:
                raise _err(f"Unknown statement object '{k}'.", _errno.EINVAL)
            self._stmt(k, arg)
            if k == "counter" and arg is None:
                stmt["counter"] = {"packets": 0, "bytes": 0}
        rule = {"expr": expr, "handle": self._next()}
        if obj.get("comment"):
            if len(str(obj["comment"]).encode()) > 128:
                raise _err("comment too long", _errno.EINVAL)
            rule["comment"] = obj["comment"]
        chain.rules.append(rule)

    def _stmt(self, k: str, arg: Any) -> None:
        if k in ("jump", "goto"):
            self._verdict({k: arg})
        elif k == "match":
            if not isinstance(arg, dict):
                raise _err("Parsing expr array at index 0 failed.", _errno.EINVAL)
            for item in ("op", "left", "right"):
                if item not in arg:
                    raise _err(f"Object item not found: {item}", _errno.EINVAL)
            self._operand(arg["left"], arg["right"])
        elif k == "vmap":
            self._ref(arg.get("data") if isinstance(arg, dict) else None)
        elif k in ("snat", "dnat"):
            if not isinstance(arg, dict):
                raise _err(f"Invalid {k} statement", _errno.EINVAL)
            addr = arg.get("addr")
            if isinstance(addr, dict) and "map" in addr:
                self._ref(addr["map"].get("data"))
            elif addr is not None:
                fam = {"ip": 4, "ip6": 6}.get(arg.get("family", ""))
                if fam is None:
                    raise _err("specify `snat ip' or 'snat ip6' in inet table to disambiguate",
                               _errno.EINVAL)
                _net(str(addr), fam)
        elif k == "mangle":
            if not isinstance(arg, dict) or "key" not in arg or "value" not in arg:
                raise _err("Object item not found: key", _errno.EINVAL)
        elif k == "ct helper":
            if not isinstance(arg, str) or arg not in self._need_table().helpers:
                raise _err("Could not process rule: No such file or directory", _errno.ENOENT)

    def _operand(self, left: Any, right: Any) -> None:
        if isinstance(right, str) and right.startswith("@"):
            self._ref(right)
            return
        payload = left.get("payload") if isinstance(left, dict) else None
        if isinstance(payload, dict) and payload.get("protocol") in ("ip", "ip6") \
                and payload.get("field") in ("saddr", "daddr"):
            ty = "ipv4_addr" if payload["protocol"] == "ip" else "ipv6_addr"
            values = right["set"] if isinstance(right, dict) and "set" in right else [right]
            for v in values:
                self._value(ty, v, True)
        meta = left.get("meta") if isinstance(left, dict) else None
        if isinstance(meta, dict) and meta.get("key") == "l4proto":
            self._value("inet_proto", right, False)

    def _ref(self, name: Any) -> None:
        if not isinstance(name, str) or not name.startswith("@") \
                or name[1:] not in self._need_table().sets:
            raise _err("No such file or directory", _errno.ENOENT)

    # -- whole-table checks the kernel does at commit ----------------------------------
    def validate(self) -> None:
        """Jump loops (EMLINK) and NAT reachable from a non-nat base chain (EOPNOTSUPP)."""
        t = self.table
        if t is None:
            return
        jumps = {name: self._jumps(c) for name, c in t.chains.items()}
        state: dict[str, int] = {}          # 1 = on the DFS stack, 2 = done

        def visit(name: str) -> None:
            state[name] = 1
            for target in jumps[name]:
                if state.get(target) == 1:
                    raise _err("Could not process rule: Too many links", _errno.EMLINK)
                if target not in state:
                    visit(target)
            state[name] = 2

        for name in t.chains:
            if name not in state:
                visit(name)
        for c in t.chains.values():
            if not c.base or c.obj["type"] == "nat":
                continue
            seen, todo = set(), [c.obj["name"]]
            while todo:
                name = todo.pop()
                if name in seen:
                    continue
                seen.add(name)
                if any(next(iter(st)) in _NAT_STMTS for r in t.chains[name].rules for st in r["expr"]):
                    raise _err("Could not process rule: Operation not supported", _errno.EOPNOTSUPP)
                todo.extend(jumps[name])

    def _jumps(self, c: _Chain) -> list[str]:
        out = []
        for r in c.rules:
            for s in r["expr"]:
                (k, arg), = s.items()
                if k in ("jump", "goto"):
                    out.append(arg["target"])
                elif k == "vmap":
                    for e in self.table.sets[arg["data"][1:]].elems:
                        verdict = e[1]
                        (vk, varg), = verdict.items()
                        if vk in ("jump", "goto"):
                            out.append(varg["target"])
        return out


def _net(text: str, version: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _err("Could not resolve hostname: Name or service not known", _errno.EINVAL) from None
    if net.version != version:
        raise _err("Could not resolve hostname: Address family for hostname not supported",
                   _errno.EINVAL)
    return net


def _int(v: Any, top: int, what: str) -> int:
    if isinstance(v, str):
        try:
            v = int(v, 0)
        except ValueError:
            raise _err(f"Could not parse {v!r}", _errno.EINVAL) from None
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= top:
        raise _err(what, _errno.EINVAL)
    return v
