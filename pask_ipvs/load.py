"""Config file -> plain data (with a line for every JSON path) -> validated, typed ``Config``.

The YAML is parsed and composed by libyaml (``CSafeLoader``) so that a
1024 x 32 config loads in a fraction of a second; lines come from the node
tree, looked up only when a problem needs one.  Duplicate keys are an error
(PyYAML keeps the last silently, which hides typos).  ``build_model`` is the
one place where a key's default is decided.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import ipaddress
import socket
from typing import Sequence

import yaml

from .errors import ConfigError, PathPart, Problem, format_path, parse_path
from .model import (
    Config, Filter, FilterAction, Health, NatMode, OnFailure, Persistence, PortRange, Protocol,
    RealServer, ServerState, Service,
)

# Defaults (the schema's "default" annotations must agree: tests/test_schema.py checks).
DEFAULT_VIP_INTERFACE = "pask0"
DEFAULT_DRAIN_TIMEOUT = 0
DEFAULT_PROTOCOL = "tcp"
DEFAULT_SCHEDULER = "wlc"
DEFAULT_NAT_MODE = "dest-nat"
DEFAULT_ON_FAILURE = "inhibit"
DEFAULT_WEIGHT = 1
DEFAULT_STATE = "enabled"
DEFAULT_NETMASK = {4: "255.255.255.255", 6: "128"}
DEFAULT_HEALTH = {"type": "none", "interval": 2, "timeout": 1, "rise": 2, "fall": 3}

# Health type -> its own keys and their defaults (None: optional, no default).
# The schema allows each key only for the types listed here.
HEALTH_PARAMS: dict[str, dict[str, object]] = {
    "none": {},
    "tcp": {},
    "http": {"path": "/", "method": "GET", "host": None, "expect_status": (200,), "body_regex": None},
    "https": {"path": "/", "method": "GET", "host": None, "expect_status": (200,), "body_regex": None,
              "sni": None, "verify_tls": False},
    "udp": {"payload": None, "expect": None},
    "dns": {"query_name": None, "query_type": "A", "expect_rcode": "NOERROR"},
    "script": {"command": None},
}


# -- YAML with lines ---------------------------------------------------------------

class LineMap:
    """JSON path -> line in the YAML file, resolved lazily from libyaml's node tree.

    A mapping entry's line is its key's line; a list item's line is where the
    item starts; a path that does not exist (a missing key) resolves to the
    line of the deepest object that does.
    """

    def __init__(self, root: yaml.Node | None):
        self.root = root

    def line(self, path: Sequence[PathPart] | str) -> int:
        if isinstance(path, str):
            path = parse_path(path)
        node = self.root
        if node is None:
            return 1
        line = node.start_mark.line + 1
        for part in path:
            child = _child(node, part)
            if child is None:
                break
            key_node, node = child
            line = key_node.start_mark.line + 1
        return line


def _child(node: yaml.Node, part: PathPart) -> tuple[yaml.Node, yaml.Node] | None:
    """(node that marks the line, value node) of ``part`` inside ``node``."""
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        found = None
        for key_node, value_node in node.value:       # last wins, as in the constructed dict
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == part:
                found = (key_node, value_node)
        return found
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item = node.value[part]
        return item, item
    return None


_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"


class _Builder:
    """Mixed into a SafeLoader: ``build`` turns the composed nodes into plain data.

    ``build`` is PyYAML's SafeConstructor with fast paths for the common
    tags (3x faster at 1024 x 32), and it refuses duplicate keys.  A key is
    always its text (``on:`` stays "on", not True), so an odd key is reported
    as an unknown key instead of being turned into a bool or an int.
    """

    def __init__(self, stream: str):
        super().__init__(stream)  # type: ignore[call-arg]
        self.duplicates: list[tuple[yaml.MappingNode, yaml.Node, yaml.Node]] = []
        self.complex_keys: list[tuple[yaml.MappingNode, yaml.Node]] = []
        self._active: set[int] = set()
        self._tags: dict[str, str] = {}

    def resolve(self, kind, value, implicit):  # type: ignore[override]
        """Memoised implicit tag of a plain scalar (keys and values repeat a lot)."""
        if kind is yaml.ScalarNode and implicit[0]:
            tag = self._tags.get(value)
            if tag is None:
                tag = self._tags[value] = super().resolve(kind, value, implicit)
            return tag
        return super().resolve(kind, value, implicit)

    def build(self, node: yaml.Node) -> object:
        cls = type(node)
        if cls is yaml.ScalarNode:
            tag = node.tag
            if tag == _STR:
                return node.value
            if tag == _INT:
                v = node.value
                if v.isascii() and v.isdigit() and (v[0] != "0" or len(v) == 1):
                    return int(v)
            return self.construct_object(node, deep=True)
        if id(node) in self._active:
            raise yaml.constructor.ConstructorError(
                None, None, "a recursive alias (an anchor used inside itself) is not allowed",
                node.start_mark)
        if cls is yaml.SequenceNode and node.tag == _SEQ:
            self._active.add(id(node))
            out = [self.build(item) for item in node.value]
            self._active.discard(id(node))
            return out
        if cls is yaml.MappingNode and node.tag == _MAP:
            self._active.add(id(node))
            out = self._build_mapping(node)
            self._active.discard(id(node))
            return out
        return self.construct_object(node, deep=True)      # !!set, !!binary, ...

    def _build_mapping(self, node: yaml.MappingNode) -> dict:
        pairs = node.value
        merged = any(k.tag == _MERGE for k, _ in pairs)
        if merged:
            self._check_duplicates(node, pairs)
            self.flatten_mapping(node)                      # merge keys (<<): own keys win
            pairs = node.value
        mapping: dict[str, object] = {}
        for key_node, value_node in pairs:
            if type(key_node) is yaml.ScalarNode:
                key = key_node.value
            else:
                self.complex_keys.append((node, key_node))
                key = f"<{key_node.id} key at line {key_node.start_mark.line + 1}>"
            mapping[key] = self.build(value_node)
        if not merged and len(mapping) != len(pairs):
            self._check_duplicates(node, pairs)
        return mapping

    def _check_duplicates(self, node: yaml.MappingNode, pairs: list) -> None:
        seen: dict[str, yaml.Node] = {}
        for key_node, _ in pairs:
            if isinstance(key_node, yaml.ScalarNode):
                first = seen.setdefault(key_node.value, key_node)
                if first is not key_node:
                    self.duplicates.append((node, key_node, first))

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        """Mappings reached through PyYAML's own constructors (e.g. inside !!set)."""
        if isinstance(node, yaml.MappingNode) and node.tag == _MAP:
            return self._build_mapping(node)
        return super().construct_mapping(node, deep)


class _PyLoader(_Builder, yaml.SafeLoader):
    """Pure Python: same results, ~10x slower; used only where PyYAML lacks libyaml."""


if getattr(yaml, "__with_libyaml__", False):
    class _Loader(_Builder, yaml.CSafeLoader):
        """libyaml's parser and composer (C) + the fast builder."""
else:                                                       # pragma: no cover
    _Loader = _PyLoader  # type: ignore[misc]


def _node_path(root: yaml.Node, target: yaml.Node) -> tuple[PathPart, ...]:
    """JSON path of ``target`` in the tree (only used for the rare duplicate-key report)."""
    stack: list[tuple[yaml.Node, tuple[PathPart, ...]]] = [(root, ())]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack.extend((v, path + (k.value,)) for k, v in node.value if isinstance(k, yaml.ScalarNode))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((v, path + (i,)) for i, v in enumerate(node.value))
    return ()


def _yaml_problem(path: str, e: yaml.YAMLError) -> Problem:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    text = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    return Problem(path, line, "$", text)


def parse_document(path: str, text: str) -> tuple[object, LineMap, list[Problem]]:
    """YAML text -> (data, lines, problems that still let validation go on: duplicate keys).

    Raises ConfigError when the text is not YAML at all (nothing else can be checked).
    """
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        data = loader.build(root) if root is not None else None
    except RecursionError:
        raise ConfigError([Problem(path, 1, "$", "the document is nested too deeply")]) from None
    except yaml.YAMLError as e:
        raise ConfigError([_yaml_problem(path, e)]) from None
    finally:
        loader.dispose()
    problems = []
    for mapping, key_node, first in loader.duplicates:
        where = _node_path(root, mapping) + (key_node.value,)
        problems.append(Problem(
            path, key_node.start_mark.line + 1, format_path(where),
            f"duplicate key {key_node.value!r} (first at line {first.start_mark.line + 1}); "
            "each key may appear once"))
    for mapping, key_node in loader.complex_keys:
        problems.append(Problem(
            path, key_node.start_mark.line + 1, format_path(_node_path(root, mapping)),
            f"a key must be a plain name, not a {key_node.id}"))
    return data, LineMap(root), problems


@contextlib.contextmanager
def _gc_paused():
    """A big config makes ~300k small objects and no garbage: the cyclic GC would run over
    them again and again (half the load time at 1024 x 32)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_document(path: str, text: str) -> tuple[object, LineMap]:
    """YAML -> plain data + JSON path -> line map. Raises ConfigError (syntax, duplicate keys)."""
    with _gc_paused():
        data, lines, problems = parse_document(path, text)
    if problems:
        raise ConfigError(problems)
    return data, lines


def load_config(path: str, text: str | None = None) -> Config:
    """Read, validate and build the config; ConfigError lists every problem found."""
    from .validate import validate

    if text is None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ConfigError([Problem(path, 0, "$", f"cannot read the config file: {reason}")]) from None
    with _gc_paused():
        data, lines, problems = parse_document(path, text)
        problems += validate(data, lines, path)
        if problems:
            raise ConfigError(problems)
        assert isinstance(data, dict)
        return build_model(data, path)


# -- model ---------------------------------------------------------------------------

def dotted_quad(text: str) -> bytes | None:
    """The 4 bytes of an IPv4 address written canonically ('10.99.0.1'), else None.

    A fast path for the common case: ``ipaddress`` parses each octet in Python
    (17% of loading 1024 x 32), inet_aton in C. Only text that inet_ntoa gives
    back unchanged counts, so inet_aton's laxer forms ('10.1', '010.0.0.1')
    still go to ``ipaddress``, which refuses them."""
    try:
        packed = socket.inet_aton(text)
    except (OSError, ValueError):       # ValueError: an embedded NUL
        return None
    return packed if socket.inet_ntoa(packed) == text else None


@functools.lru_cache(maxsize=1 << 16)
def canonical_address(text: str) -> str:
    """'fd00:0::1' -> 'fd00::1' (addresses are compared and keyed in this form)."""
    if dotted_quad(text) is not None:
        return text
    return str(ipaddress.ip_address(text))


@functools.lru_cache(maxsize=1 << 12)
def canonical_network(text: str) -> str:
    """'10.0.0.0/8' stays; a plain address becomes a /32 or /128 network."""
    return str(ipaddress.ip_network(text, strict=True))


def port_range(value: int | str) -> PortRange:
    if isinstance(value, int):
        return PortRange(value, value)
    low, high = value.split("-")
    return PortRange(int(low), int(high))


def _health(raw: dict | None) -> Health:
    raw = raw or {}
    htype = raw.get("type", DEFAULT_HEALTH["type"])
    params = []
    for key, default in HEALTH_PARAMS[htype].items():
        value = raw.get(key, default)
        if value is None:
            continue
        if isinstance(value, list):
            value = tuple(value)
        params.append((key, value))
    port = raw.get("port")
    return Health(
        type=htype,
        interval=float(raw.get("interval", DEFAULT_HEALTH["interval"])),
        timeout=float(raw.get("timeout", DEFAULT_HEALTH["timeout"])),
        rise=int(raw.get("rise", DEFAULT_HEALTH["rise"])),
        fall=int(raw.get("fall", DEFAULT_HEALTH["fall"])),
        port=int(port) if port is not None else None,
        params=tuple(sorted(params)),
    )


def _filter(raw: dict) -> Filter:
    def opt(key, conv):
        value = raw.get(key)
        return conv(value) if value is not None else None

    return Filter(
        action=FilterAction(raw["action"]),
        protocol=opt("protocol", Protocol),
        src=opt("src", canonical_network),
        dst=opt("dst", canonical_network),
        src_port=opt("src_port", port_range),
        dst_port=opt("dst_port", port_range),
    )


def _service(raw: dict) -> Service:
    vip = canonical_address(raw["vip"])
    family = 6 if ":" in vip else 4
    port = int(raw["port"])
    persistence = None
    if "persistence" in raw:
        p = raw["persistence"]
        netmask = p.get("netmask", DEFAULT_NETMASK[family])
        persistence = Persistence(timeout=int(p["timeout"]), netmask=str(netmask))
    servers = tuple(
        RealServer(
            address=canonical_address(rs["address"]),
            port=int(rs.get("port", port)),
            weight=int(rs.get("weight", DEFAULT_WEIGHT)),
            state=ServerState(rs.get("state", DEFAULT_STATE)),
            explicit_port="port" in rs,
        )
        for rs in raw.get("real_servers", ())
    )
    return Service(
        name=raw["name"],
        vip=vip,
        port=port,
        protocol=Protocol(raw.get("protocol", DEFAULT_PROTOCOL)),
        scheduler=raw.get("scheduler", DEFAULT_SCHEDULER),
        nat_mode=NatMode(raw.get("nat_mode", DEFAULT_NAT_MODE)),
        real_servers=servers,
        snat_ip=canonical_address(raw["snat_ip"]) if "snat_ip" in raw else None,
        local_networks=tuple(canonical_network(n) for n in raw.get("local_networks", ())),
        persistence=persistence,
        filters=tuple(_filter(f) for f in raw.get("filters", ())),
        health=_health(raw.get("health")),
        on_failure=OnFailure(raw.get("on_failure", DEFAULT_ON_FAILURE)),
        fwmark=int(raw["fwmark"]) if "fwmark" in raw else None,
    )


def build_model(data: dict, source: str) -> Config:
    """Validated data -> Config with every default applied. Call only on data that validated."""
    return Config(
        services=tuple(_service(s) for s in data["services"]),
        vip_interface=data.get("vip_interface", DEFAULT_VIP_INTERFACE),
        drain_timeout=int(data.get("drain_timeout", DEFAULT_DRAIN_TIMEOUT)),
        source=source,
    )
