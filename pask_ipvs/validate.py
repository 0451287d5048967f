"""Two-stage validation of config data: JSON Schema (structure), then semantic checks.

Both stages always run and every problem is collected: the semantic stage
reads the raw data defensively and simply skips a value the schema already
rejected, so one mistake is reported once, and a bad entry is never skipped
without a word.  Messages say what is wrong and what is allowed.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import json
import os
import re
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from .defaults import DEFAULT_HEALTH, DEFAULT_NAT_MODE, DEFAULT_PROTOCOL
from .errors import Lines, PathPart, Problem, format_path
from .model import ftp_over_dsr
from .objects import dotted_quad, split_listen

if TYPE_CHECKING:                 # imported where used: a valid config never needs jsonschema
    import jsonschema
    from jsonschema.exceptions import ValidationError

Path = tuple[PathPart, ...]
Issue = tuple[Path, str]
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DSR_MODES = ("l2-dsr", "l3-dsr")

# application -> (protocols it runs on, NAT modes pask carries it in). docs/design.md
# "Application protocols"; the kernel's side is in docs/kernel-facts.md.
APPLICATIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ftp": (("tcp",), ("dest-nat", "both-nat", "lan-to-lan") + DSR_MODES),
    "tftp": (("udp",), ("dest-nat", "both-nat", "lan-to-lan")),
    "h323": (("tcp", "udp"), ("both-nat",)),
}
# why a mode cannot carry an application: (application, mode or "dsr") -> reason
APPLICATION_MODE_LIMITS = {
    ("tftp", "dsr"): "the TFTP server answers from a new port, which only a conntrack helper on "
                     "the LB can tie to the request, and in DSR modes the answer never passes the LB",
    ("h323", "dsr"): "the H.245 and media channels are announced inside the call signalling, which "
                     "only a conntrack helper on the LB can read, and in DSR modes the answers never "
                     "pass the LB",
    ("h323", "dest-nat"): "the kernel's H.323 NAT rewrites the addresses inside the signalling only "
                          "on a connection netfilter translated, and IPVS's dest-nat is not one: "
                          "clients would get the real server's H.245 address, and a second "
                          "server's answer on the same port clashes with the first's (calls hang)",
    ("h323", "lan-to-lan"): "clients outside local_networks are served as in dest-nat, where the "
                            "kernel's H.323 NAT cannot rewrite the signalling",
}


@functools.cache
def load_schema() -> dict:
    """The config's JSON Schema (schemas/pask.schema.json, shipped inside the package)."""
    # a plain file read: importlib.resources costs a start-up its pathlib and more, and the
    # package is a directory (fastpath/config_cache.py's code digest walks it too)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas", "pask.schema.json"),
              encoding="utf-8") as f:
        return json.load(f)


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    """The reference validator (Python jsonschema): its errors carry what the messages need."""
    import jsonschema
    return jsonschema.Draft202012Validator(load_schema())


def validate(data: object, lines: Lines, source: str) -> list[Problem]:
    """Every problem in ``data`` (schema and semantic), each with its file line."""
    issues = list(schema_issues(data))
    issues += semantic_issues(data, lines)
    return [Problem(source, lines.line(path), format_path(path), message) for path, message in issues]


def wants_text(path: Sequence[PathPart]) -> bool:
    """Whether the only scalar the schema accepts at ``path`` is a string: there a plain
    scalar such as ``on`` or ``010`` means its text, whatever a YAML version makes of it."""
    types = _types_at(tuple(path))
    return types is not None and types & {"string", "integer", "number", "boolean"} == {"string"}


@functools.cache
def _types_at(path: Path) -> frozenset[str] | None:
    """The JSON types the schema allows at ``path`` (every branch), None when it does not say."""
    nodes = [load_schema()]
    for part in path:
        nodes = [child for node in nodes for child in _children(node, part)]
        if not nodes:
            return None
    types: set[str] = set()
    for node in nodes:
        node_types = _own_types(node)
        if node_types is None:
            return None
        types |= node_types
    return frozenset(types)


def _branches(node: dict) -> list[dict]:
    """``node`` with its $ref resolved and its allOf/oneOf/anyOf/then/else branches."""
    out, todo = [], [node]
    while todo:
        n = todo.pop()
        if not isinstance(n, dict):
            continue
        if "$ref" in n:
            todo.append(load_schema()["$defs"][n["$ref"].rsplit("/", 1)[-1]])
        out.append(n)
        for key in ("allOf", "oneOf", "anyOf"):
            todo.extend(n.get(key, ()))
        todo.extend(n[key] for key in ("then", "else") if key in n)
    return out


def _children(node: dict, part: PathPart) -> list[dict]:
    found = []
    for n in _branches(node):
        if isinstance(part, str) and part in n.get("properties", {}):
            found.append(n["properties"][part])
        elif isinstance(part, int) and isinstance(n.get("items"), dict):
            found.append(n["items"])
    return found


_JSON_TYPE = {str: "string", bool: "boolean", int: "integer", float: "number", type(None): "null"}


def _own_types(node: dict) -> set[str] | None:
    """Types one subschema (with its branches) allows; None when some branch allows anything.
    A branch that forbids the key ({"not": {}}) adds none."""
    types: set[str] = set()
    for n in _branches(node):
        if "type" in n:
            t = n["type"]
            types |= {t} if isinstance(t, str) else set(t)
        elif "const" in n:
            types.add(_JSON_TYPE.get(type(n["const"]), "object"))
        elif "enum" in n:
            types |= {_JSON_TYPE.get(type(v), "object") for v in n["enum"]}
        elif not any(k in n for k in ("$ref", "allOf", "oneOf", "anyOf", "then", "else", "not",
                                       "if", "properties")):
            return None
    return types


# -- stage 1: JSON Schema ------------------------------------------------------------
#
# Two validators of the one schema.  jsonschema-rs (Rust) answers yes or no:
# 0.01 s for a whole 1024 x 32 config, where Python jsonschema takes 1.9 s
# (~55 us per real server).  A config it accepts is done, and Python
# jsonschema is never even imported (~1 s of start-up under emulation).
# Only when it says no does jsonschema run, because its errors carry what the
# messages need (keyword, schema, sub-errors): over the document with a copy
# of the schema whose real_servers list has no ``items``, and over each real
# server that the Rust check of that one definition does not pass.

FAST_DEF = "real_server"


def _def_schema(name: str) -> dict:
    root = load_schema()
    return {"$schema": root["$schema"], "$defs": root["$defs"], "$ref": f"#/$defs/{name}"}


@functools.cache
def _quick(name: str | None = None) -> Callable[[object], bool]:
    """jsonschema-rs's yes/no for the whole document, or for one definition."""
    import jsonschema_rs
    return jsonschema_rs.Draft202012Validator(load_schema() if name is None else _def_schema(name)).is_valid


def passes(instance: object, name: str | None = None) -> bool:
    """True only if the schema (or its definition ``name``) accepts ``instance``."""
    try:
        return _quick(name)(instance)
    except (ValueError, OverflowError):      # a YAML type JSON has no word for (date, bytes, set)
        return False                          # -> let jsonschema decide and explain


@functools.cache
def _precise() -> tuple[jsonschema.Draft202012Validator, jsonschema.Draft202012Validator | None]:
    """(validator of the document without real-server items, validator of one real server).

    schema_issues checks exactly services[*].real_servers[*] itself, so the split is
    used only while that is the one place the schema validates real servers.
    """
    import jsonschema
    root = load_schema()
    ref = {"$ref": f"#/$defs/{FAST_DEF}"}
    if json.dumps(root).count(json.dumps(ref)) != 1 or \
            root["$defs"]["service"]["properties"]["real_servers"].get("items") != ref:
        return _validator(), None
    outer = json.loads(json.dumps(root))
    del outer["$defs"]["service"]["properties"]["real_servers"]["items"]
    return (jsonschema.Draft202012Validator(outer),
            jsonschema.Draft202012Validator(_def_schema(FAST_DEF)))


def schema_issues(data: object) -> Iterator[Issue]:
    if passes(data):
        return
    outer, item_validator = _precise()
    for err in outer.iter_errors(data):
        yield from _translate(err, data)
    if item_validator is None:
        return
    services = data.get("services") if isinstance(data, dict) else None
    for i, svc in enumerate(services if isinstance(services, list) else ()):
        servers = svc.get("real_servers") if isinstance(svc, dict) else None
        for j, rs in enumerate(servers if isinstance(servers, list) else ()):
            if not passes(rs, FAST_DEF):
                for err in item_validator.iter_errors(rs):
                    yield from _translate(err, data, ("services", i, "real_servers", j))


_TYPE_NAMES = {
    "object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
    "number": "a number", "boolean": "true or false", "null": "null",
}


def _show(value: object) -> str:
    """A value as the user wrote it, briefly."""
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{value} ({type(value).__name__})"


# What users coming from PAS-K or other balancers may write instead.
_ALIASES = {
    "round-robin": "rr", "roundrobin": "rr", "weighted-round-robin": "wrr",
    "least-connection": "lc", "least-connections": "lc", "leastconn": "lc",
    "weighted-least-connection": "wlc", "weighted-least-connections": "wlc",
    "source-hash": "sh", "source": "sh", "destination-hash": "dh", "maglev": "mh",
    "shortest-expected-delay": "sed", "never-queue": "nq", "failover": "fo", "overflow": "ovf",
    "nat": "dest-nat", "masq": "dest-nat", "masquerade": "dest-nat", "dr": "l2-dsr",
    "direct-routing": "l2-dsr", "dsr": "l2-dsr", "tun": "l3-dsr", "tunnel": "l3-dsr", "ipip": "l3-dsr",
    "snat": "both-nat", "full-nat": "both-nat", "fullnat": "both-nat",
    "drain": "disabled", "maintenance": "disabled", "sorry": "backup", "down": "disabled",
}


def _suggest(word: object, choices: Sequence[str]) -> str:
    if not isinstance(word, str):
        return ""
    alias = _ALIASES.get(word.lower().replace("_", "-").replace(" ", "-"))
    if alias in choices:
        return f"; did you mean {alias!r}?"
    for choice in choices:
        if choice.lower() == word.lower():
            return f"; did you mean {choice!r}?"
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _range_text(schema: dict) -> str:
    low = schema.get("minimum")
    xlow = schema.get("exclusiveMinimum")
    high = schema.get("maximum")
    if low is not None and high is not None:
        return f"{low}..{high}"
    parts = []
    if low is not None:
        parts.append(f">= {low}")
    if xlow is not None:
        parts.append(f"> {xlow}")
    if high is not None:
        parts.append(f"<= {high}")
    return " and ".join(parts)


def _parent(data: object, path: Path) -> object:
    for part in path:
        try:
            data = data[part]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _translate(err: ValidationError, data: object, prefix: Path = ()) -> Iterator[Issue]:
    """One jsonschema error -> clear (path, message) issues; ``prefix``: where the instance is."""
    path: Path = prefix + tuple(err.absolute_path)
    kw = err.validator
    value = err.instance
    schema = err.schema if isinstance(err.schema, dict) else {}
    desc = schema.get("description")

    if kw == "additionalProperties" and isinstance(value, dict):
        allowed = list(schema.get("properties", {}))
        for key in value:
            if key not in allowed:
                yield path + (key,), (f"unknown key {key!r} (allowed: {', '.join(allowed)})"
                                      + _suggest(key, allowed))
    elif kw == "required" and isinstance(value, dict):
        why = f": {desc}" if desc and "then" in err.absolute_schema_path else ""
        for key in err.validator_value:
            if key not in value:
                yield path, f"missing required key {key!r}{why}"
    elif kw == "type":
        types = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        expected = desc or " or ".join(_TYPE_NAMES.get(t, t) for t in types)
        yield path, f"expected {expected}, got {_show(value)}"
    elif kw in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        word = "too small" if "inimum" in kw else "too large"
        yield path, f"{_show(value)} is {word} (allowed: {_range_text(schema)})"
    elif kw == "enum":
        allowed = [str(v) for v in err.validator_value]
        yield path, f"unknown value {_show(value)} (allowed: {', '.join(allowed)})" + _suggest(value, allowed)
    elif kw == "const":
        yield path, f"{_show(value)} is not supported (allowed: {err.validator_value})"
    elif kw == "pattern":
        allowed = desc or f"text matching {err.validator_value}"
        yield path, f"{_show(value)} is not valid (allowed: {allowed})"
    elif kw in ("minLength", "maxLength"):
        n = err.validator_value
        if kw == "minLength" and value == "":
            yield path, "an empty string is not allowed" + (f" (allowed: {desc})" if desc else "")
        elif kw == "minLength":
            yield path, f"{_show(value)} is too short (allowed: at least {n} characters)"
        else:
            yield path, f"{_show(value)} is too long (allowed: at most {n} characters)"
    elif kw in ("minItems", "maxItems"):
        n = err.validator_value
        have = len(value) if isinstance(value, list) else 0
        what = "an empty list is" if not have else ("1 item is" if have == 1 else f"{have} items are")
        bound = "at least" if kw == "minItems" else "at most"
        yield path, (f"{what} not allowed (allowed: {bound} {n} item{'s' if n != 1 else ''}"
                     + (f": {desc}" if desc else "") + ")")
    elif kw == "not" and path and isinstance(path[-1], str):
        parent = _parent(data, path[:-1])
        htype = parent.get("type", DEFAULT_HEALTH["type"]) if isinstance(parent, dict) else None
        here = f" for health type {htype!r}" if htype is not None else " here"
        yield path, f"key {path[-1]!r} is not allowed{here}" + (f" ({desc})" if desc else "")
    elif kw in ("oneOf", "anyOf") and err.context:
        matching = [e for e in err.context if e.validator != "type"]
        if matching:
            from jsonschema.exceptions import best_match
            yield from _translate(best_match(matching), data, prefix)
        else:
            yield path, f"expected {desc or 'another kind of value'}, got {_show(value)}"
    else:
        yield path, err.message


# -- stage 2: semantic checks --------------------------------------------------------

def _int(value: object, low: int, high: int) -> int | None:
    """``value`` if it is a valid integer in range (the schema reports it otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if low <= value <= high else None


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return float(value)


def _choice(raw: dict, key: str, default: str, allowed: Sequence[str]) -> str | None:
    value = raw.get(key, default)
    return value if value in allowed else None


def _hostport(addr: IpAddress, port: int | None) -> str:
    host = f"[{addr}]" if addr.version == 6 else str(addr)
    return host if port is None else f"{host}:{port}"


@functools.lru_cache(maxsize=1 << 12)     # repeated addresses; not one entry per real server
def _parse_address(text: str) -> IpAddress | str:
    """The address, or why it is not one."""
    packed = dotted_quad(text)
    if packed is not None:
        return ipaddress.IPv4Address(packed)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if ":" not in text and re.search(r"[A-Za-z]", text):
        return "host names are not resolved"
    try:
        if ":" in text:
            ipaddress.IPv6Address(text)
        else:
            ipaddress.IPv4Address(text)
    except ValueError as e:
        return str(e).replace(f" in {text!r}", "")
    return "not an address"                                   # pragma: no cover


@functools.lru_cache(maxsize=1 << 12)
def _parse_network(text: str) -> IpNetwork | str:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            return str(e)
        return f"{text} has host bits set; did you mean {loose}?"


_UNSPECIFIED_V4 = bytes(4)
_MASK_RE = re.compile(r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$")


class _Semantics:
    """Checks that relate values; each appends (path, message) to ``issues``."""

    def __init__(self, lines: Lines):
        self.lines = lines
        self.issues: list[Issue] = []

    def add(self, path: Path, message: str) -> None:
        self.issues.append((path, message))

    # -- single values ----------------------------------------------------------
    def metrics(self, path: Path, listen: object) -> None:
        if not isinstance(listen, str) or not listen:
            return
        parts = split_listen(listen)
        if parts is None:
            self.add(path, f"{listen!r} is not address:port (an IPv6 address goes in brackets: "
                           f"\"[::1]:9640\")")
            return
        host, port = parts
        parsed = _parse_address(host)
        if isinstance(parsed, str):
            self.add(path, f"{host!r} in {listen!r} is not an IPv4 or IPv6 address ({parsed})")
        if not (port.isdigit() and 1 <= int(port) <= 65535):
            self.add(path, f"port {port!r} in {listen!r} is not a port 1..65535")

    def address(self, path: Path, value: object, what: str) -> IpAddress | None:
        if not isinstance(value, str) or not value:
            return None
        parsed = _parse_address(value)
        if isinstance(parsed, str):
            self.add(path, f"{value!r} is not an IPv4 or IPv6 address ({parsed})")
            return None
        if parsed.is_unspecified or parsed.is_multicast:
            kind = "the unspecified address" if parsed.is_unspecified else "a multicast address"
            self.add(path, f"{value} is {kind}; a {what} must be a unicast address")
            return None
        return parsed

    def network(self, path: Path, value: object) -> IpNetwork | None:
        if not isinstance(value, str) or not value:
            return None
        parsed = _parse_network(value)
        if isinstance(parsed, str):
            self.add(path, f"{value!r} is not an IPv4 or IPv6 address or CIDR network ({parsed})")
            return None
        return parsed

    def same_family(self, path: Path, what: str, value: IpAddress | IpNetwork | None,
                    vip: IpAddress | None) -> bool:
        if value is None or vip is None or value.version == vip.version:
            return True
        self.add(path, f"{what} {value} is IPv{value.version} but the VIP {vip} is IPv{vip.version} "
                       f"(allowed: IPv{vip.version} only)")
        return False

    def port_match(self, path: Path, value: object) -> None:
        if not isinstance(value, str) or not re.fullmatch(r"\d{1,5}-\d{1,5}", value):
            return
        low, high = (int(p) for p in value.split("-"))
        if not (1 <= low <= 65535 and 1 <= high <= 65535):
            self.add(path, f"port range {value!r} is out of range (allowed: ports 1..65535)")
        elif low > high:
            self.add(path, f"port range {value!r} is reversed: {low} > {high} "
                           f"(allowed: low <= high, e.g. '{high}-{low}')")

    def regex(self, path: Path, value: object) -> None:
        if not isinstance(value, str):
            return
        try:
            re.compile(value)
        except re.error as e:
            self.add(path, f"invalid regular expression {value!r}: {e}")

    def netmask(self, path: Path, value: object, vip: IpAddress | None) -> None:
        if vip is None or isinstance(value, bool) or not isinstance(value, (str, int)):
            return
        if vip.version == 6:
            if not isinstance(value, int) or not 1 <= value <= 128:
                self.add(path, f"{_show(value)} is not valid for an IPv6 service "
                               "(allowed: a prefix length 1..128)")
            return
        if isinstance(value, int):
            hint = (f", e.g. {ipaddress.IPv4Network(f'0.0.0.0/{value}').netmask} for /{value}"
                    if 1 <= value <= 32 else "")
            self.add(path, f"{value} is a prefix length; an IPv4 service takes a dotted netmask{hint}")
            return
        try:
            mask = int(ipaddress.IPv4Address(value)) if _MASK_RE.match(value) else None
        except ValueError:
            mask = None
        if mask is None:
            self.add(path, f"{value!r} is not a dotted IPv4 netmask (allowed: e.g. 255.255.255.0)")
            return
        inverted = ~mask & 0xFFFFFFFF
        if mask == 0 or inverted & (inverted + 1):
            self.add(path, f"{value} is not a contiguous netmask "
                           "(allowed: 128.0.0.0 .. 255.255.255.255, ones then zeros)")

    # -- one service ------------------------------------------------------------
    def service(self, p: Path, svc: dict) -> None:
        vip = self.address(p + ("vip",), svc.get("vip"), "VIP")
        port = _int(svc.get("port"), 0, 65535)
        proto = _choice(svc, "protocol", DEFAULT_PROTOCOL, ("tcp", "udp", "sctp"))
        mode = _choice(svc, "nat_mode", DEFAULT_NAT_MODE,
                       ("dest-nat", "both-nat", "l2-dsr", "l3-dsr", "lan-to-lan"))
        self.snat(p, svc, mode, vip)
        self.local_networks(p, svc, mode, vip)
        persistence = svc.get("persistence")
        if isinstance(persistence, dict) and "netmask" in persistence:
            self.netmask(p + ("persistence", "netmask"), persistence["netmask"], vip)
        if port == 0 and "persistence" not in svc:
            self.add(p + ("port",), "port 0 (all ports) needs persistence: IPVS accepts port 0 only "
                                    "on a persistent service (allowed: port 1..65535, or add persistence)")
        filters = svc.get("filters")
        if isinstance(filters, list):
            for i, flt in enumerate(filters):
                if isinstance(flt, dict):
                    self.filter(p + ("filters", i), flt, vip, proto)
        if "fwmark" in svc and _int(svc["fwmark"], 1, 0xFFFFFFFF) is not None and not filters \
                and not ftp_over_dsr(svc.get("application"), mode):      # an fwmark service too
            self.add(p + ("fwmark",), "fwmark is only used by a service with filters "
                                      "(a service without filters is matched by VIP, port and protocol)")
        self.application(p, svc, proto, mode, port)
        servers = svc.get("real_servers")
        if isinstance(servers, list):
            self.real_servers(p + ("real_servers",), servers, vip, port, mode)
        health = svc.get("health")
        if isinstance(health, dict):
            self.health(p + ("health",), health)

    def application(self, p: Path, svc: dict, proto: str | None, mode: str | None,
                    port: int | None) -> None:
        app = svc.get("application", "none")
        if "passive_ports" in svc:
            self.port_match(p + ("passive_ports",), svc["passive_ports"])
            if app != "ftp" or (mode is not None and mode not in DSR_MODES):
                self.add(p + ("passive_ports",),
                         "passive_ports is only used by application ftp in l2-dsr or l3-dsr "
                         "(in NAT modes ip_vs_ftp follows each PASV/EPSV answer itself)")
        if app not in APPLICATIONS:
            return
        where = p + ("application",)
        protocols, modes = APPLICATIONS[app]
        if proto is not None and proto not in protocols:
            self.add(where, f"application {app} runs on {' or '.join(protocols)}, not {proto} "
                            f"(allowed: protocol {' or '.join(protocols)}, or application none)")
        if mode is not None and mode not in modes:
            why = APPLICATION_MODE_LIMITS[(app, "dsr" if mode in DSR_MODES else mode)]
            self.add(where, f"application {app} cannot work in nat_mode {mode}: {why} "
                            f"(allowed: {', '.join(modes)})")
        if port is not None and port == 0:
            self.add(where, f"application {app} needs its service port: the kernel's helper "
                            "follows the port the client connected to (allowed: port 1..65535)")
        elif app == "ftp" and mode in DSR_MODES and port == 1:
            self.add(where, "application ftp in a DSR mode also takes the active-mode data port "
                            "(the control port - 1), so the control port must be 2..65535")

    def snat(self, p: Path, svc: dict, mode: str | None, vip: IpAddress | None) -> None:
        if "snat_ip" in svc:
            addr = self.address(p + ("snat_ip",), svc["snat_ip"], "snat_ip")
            if mode is not None and mode != "both-nat":
                self.add(p + ("snat_ip",), f"snat_ip is only used with nat_mode both-nat "
                                           f"(this service is {mode})")
            else:
                self.same_family(p + ("snat_ip",), "snat_ip", addr, vip)
        elif mode == "both-nat":
            self.add(p, "nat_mode both-nat needs snat_ip: the source address for traffic "
                        "toward the real servers")

    def local_networks(self, p: Path, svc: dict, mode: str | None, vip: IpAddress | None) -> None:
        nets = svc.get("local_networks")
        if mode == "lan-to-lan" and (nets is None or nets == []):
            where = p + ("local_networks",) if "local_networks" in svc else p
            self.add(where, "nat_mode lan-to-lan needs local_networks: the client networks on "
                            "the real servers' LAN (allowed: a non-empty list, e.g. [10.99.2.0/24])")
            return
        if not isinstance(nets, list) or not nets:
            return
        if mode is not None and mode != "lan-to-lan":
            self.add(p + ("local_networks",), f"local_networks is only used with nat_mode lan-to-lan "
                                              f"(this service is {mode})")
            return
        for i, text in enumerate(nets):
            path = p + ("local_networks", i)
            self.same_family(path, "local network", self.network(path, text), vip)

    def filter(self, p: Path, flt: dict, vip: IpAddress | None, proto: str | None) -> None:
        for key in ("src", "dst"):
            if key in flt:
                self.same_family(p + (key,), f"filter {key}", self.network(p + (key,), flt[key]), vip)
        fproto = flt.get("protocol")
        if proto is not None and fproto in ("tcp", "udp", "sctp") and fproto != proto:
            self.add(p + ("protocol",), f"filter protocol {fproto} contradicts the service protocol "
                                        f"{proto} (allowed: {proto}, or leave protocol out)")
        for key in ("src_port", "dst_port"):
            if key in flt:
                self.port_match(p + (key,), flt[key])

    def real_servers(self, p: Path, servers: list, vip: IpAddress | None, port: int | None,
                     mode: str | None) -> None:
        # (canonical address text, port) -> index of the first real server with them
        seen: dict[tuple[str, int], int] = {}
        # The common case first, with no IPv4Address made: a canonical dotted quad that is
        # unicast, of an IPv4 service (or one whose VIP is already reported). Its checks
        # are those of the general path below, in its order, with its messages.
        fast_vip = vip is None or vip.version == 4
        vip_packed = vip.packed if vip is not None else None
        dsr = mode in DSR_MODES
        for i, rs in enumerate(servers):
            if not isinstance(rs, dict):
                continue
            value = rs.get("address")
            packed = dotted_quad(value) if fast_vip and type(value) is str else None
            if packed is not None and packed != _UNSPECIFIED_V4 and packed[0] & 0xF0 != 0xE0:
                if packed == vip_packed:
                    self.add(p + (i, "address"), f"real server {value} is the VIP itself "
                                                 "(allowed: any address but the VIP)")
                if "port" in rs:
                    rs_port = _int(rs["port"], 1, 65535)
                    if dsr and rs_port is not None and port is not None and rs_port != port:
                        self.add(p + (i, "port"), f"{mode} forwards packets unchanged, so a real "
                                                  f"server's port must be the service port "
                                                  f"(allowed: {port}, or leave port out)")
                else:
                    rs_port = port
                if rs_port is not None:
                    first = seen.setdefault((value, rs_port), i)
                    if first != i:
                        self.add(p + (i, "address"), f"duplicate real server {value}:{rs_port} "
                                                     f"(first at line {self.lines.line(p + (first,))})")
                continue
            q = p + (i,)
            addr = self.address(q + ("address",), value, "real server address")
            if addr is not None and not self.same_family(q + ("address",), "real server", addr, vip):
                addr = None
            if addr is not None and addr == vip:
                self.add(q + ("address",), f"real server {addr} is the VIP itself "
                                           "(allowed: any address but the VIP)")
            rs_port = _int(rs["port"], 1, 65535) if "port" in rs else port
            if (mode in DSR_MODES and "port" in rs and rs_port is not None and port is not None
                    and rs_port != port):
                self.add(q + ("port",), f"{mode} forwards packets unchanged, so a real server's port "
                                        f"must be the service port (allowed: {port}, or leave port out)")
            if addr is not None and rs_port is not None:
                first = seen.setdefault((str(addr), rs_port), i)
                if first != i:
                    self.add(q + ("address",), f"duplicate real server {_hostport(addr, rs_port)} "
                                               f"(first at line {self.lines.line(p + (first,))})")

    def health(self, p: Path, health: dict) -> None:
        interval = _num(health.get("interval", DEFAULT_HEALTH["interval"]))
        timeout = _num(health.get("timeout", DEFAULT_HEALTH["timeout"]))
        if interval is not None and timeout is not None and timeout > interval:
            where = p + ("timeout",) if "timeout" in health else p + ("interval",)
            self.add(where, f"timeout {timeout:g} is longer than interval {interval:g} "
                            "(allowed: timeout <= interval)")
        for key in ("body_regex", "expect"):
            if key in health:
                self.regex(p + (key,), health[key])

    # -- across services ----------------------------------------------------------
    def services(self, services: list) -> None:
        rows: list[tuple[object, object, object]] = []
        for i, svc in enumerate(services):
            if not isinstance(svc, dict):
                rows.append((None, None, None))
                continue
            self.service(("services", i), svc)
            name = svc.get("name")
            vip = svc.get("vip")
            vip_addr = _parse_address(vip) if isinstance(vip, str) else None
            port = _int(svc.get("port"), 0, 65535)
            proto = _choice(svc, "protocol", DEFAULT_PROTOCOL, ("tcp", "udp", "sctp"))
            endpoint = None
            ftp_dsr = ftp_over_dsr(svc.get("application"), svc.get("nat_mode"))
            if (not svc.get("filters") and not ftp_dsr and isinstance(vip_addr, (ipaddress.IPv4Address, ipaddress.IPv6Address))
                    and port is not None and proto is not None):
                endpoint = (vip_addr, port, proto)
            mark = _int(svc.get("fwmark"), 1, 0xFFFFFFFF) if "fwmark" in svc else None
            rows.append((name if isinstance(name, str) else None, endpoint, mark))
        for rule, i, first in service_clashes(rows):
            p: Path = ("services", i)
            name, endpoint, mark = rows[i]
            other = services[first].get("name")
            if rule == "name":
                self.add(p + ("name",), f"duplicate service name {name!r} "
                                        f"(first at line {self.lines.line(('services', first, 'name'))}; "
                                        "names must be unique)")
            elif rule == "endpoint":
                label = repr(name) if name is not None else f"#{i}"
                vip_addr, port, proto = endpoint      # type: ignore[misc]
                self.add(p, f"service {label} uses {_hostport(vip_addr, port)}/{proto} like service "
                            f"{other!r} (line {self.lines.line(('services', first))}); a VIP, port "
                            "and protocol belong to one service (allowed: another port or "
                            "protocol, or filters)")
            else:
                self.add(p + ("fwmark",), f"fwmark {mark} is already used by service {other!r} "
                                          f"(line {self.lines.line(('services', first, 'fwmark'))}); "
                                          "each service needs its own fwmark")


def ha_issues(data: dict, lines: Lines) -> list[Issue]:
    """The ``ha:`` rules the schema cannot express (docs/design.md "ha"): a pair of distinct
    nodes, and every address clients or servers use (VIPs, snat_ip) able to move with the
    active node."""
    checker = _Semantics(lines)
    ha = data.get("ha")
    if not isinstance(ha, dict):
        return []
    nodes = ha.get("nodes") if isinstance(ha.get("nodes"), list) else []
    seen: dict[str, dict[object, int]] = {"name": {}, "address": {}, "priority": {}}
    families: set[int] = set()
    for i, node in enumerate(nodes):
        if not isinstance(node, dict):
            continue
        p: Path = ("ha", "nodes", i)
        addr = checker.address(p + ("address",), node.get("address"), "node address")
        if addr is not None:
            families.add(addr.version)
        for key in seen:
            value = addr if key == "address" else node.get(key)
            if value is None or isinstance(value, (dict, list)):
                continue
            first = seen[key].setdefault(value, i)
            if first != i:
                checker.add(p + (key,), f"{key} {value} is also node {nodes[first].get('name')!r}'s "
                                        f"(line {lines.line(('ha', 'nodes', first, key))}); the two "
                                        f"nodes need different {key}s"
                                        + (" (the higher one is MASTER when both start)"
                                           if key == "priority" else ""))
    if len(families) > 1:
        checker.add(("ha", "nodes"), "the nodes' addresses are of different families; both must be "
                                     "IPv4 or both IPv6 (they talk VRRP to each other)")
    floating: list[tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, str]] = []
    complete = True         # a refused floating address: VIPs are not judged against the rest
    raw_floating = ha.get("floating_addresses") if isinstance(ha.get("floating_addresses"), list) else []
    firsts: dict[object, int] = {}
    for i, f in enumerate(raw_floating):
        if not isinstance(f, dict) or not isinstance(f.get("address"), str):
            continue
        path: Path = ("ha", "floating_addresses", i, "address")
        try:
            iface = ipaddress.ip_interface(f["address"])
        except ValueError as e:
            checker.add(path, f"{f['address']!r} is not an address with its prefix length, such as "
                              f"10.99.1.1/24 ({e})")
            complete = False
            continue
        if "/" not in f["address"]:
            checker.add(path, f"{f['address']!r} has no prefix length: write it as the interface "
                              f"gets it, such as {iface.ip}/24")
            complete = False
            continue
        first = firsts.setdefault(iface.ip, i)
        if first != i:
            checker.add(path, f"{iface.ip} is already floating_addresses[{first}] (line "
                              f"{lines.line(('ha', 'floating_addresses', first, 'address'))})")
            complete = False
            continue
        floating.append((iface, str(f.get("interface"))))
    services = data.get("services") if isinstance(data.get("services"), list) and complete else []
    where = ", ".join(f"{iface} on {name}" for iface, name in floating) or "none"
    for i, svc in enumerate(services):
        if not isinstance(svc, dict) or not isinstance(svc.get("vip"), str):
            continue
        vip = _parse_address(svc["vip"])
        if isinstance(vip, str):
            continue
        if not any(vip in iface.network for iface, _ in floating):
            checker.add(("services", i, "vip"),
                        f"VIP {vip} is in no network of ha.floating_addresses ({where}): with ha, "
                        "keepalived moves each VIP to the active node on the interface of the "
                        "floating address whose network holds it (allowed: a VIP inside one of "
                        "them, or a floating address for the VIP's network)")
        snat = svc.get("snat_ip")
        if isinstance(snat, str) and svc.get("nat_mode") == "both-nat":
            addr = _parse_address(snat)
            vips = {_parse_address(s.get("vip")) for s in services
                    if isinstance(s, dict) and isinstance(s.get("vip"), str)}
            if not isinstance(addr, str) and addr not in {iface.ip for iface, _ in floating} \
                    and addr not in vips:
                checker.add(("services", i, "snat_ip"),
                            f"snat_ip {addr} does not move with the active node: with ha, the real "
                            "servers answer to it, so it must be one of ha.floating_addresses "
                            f"({where}) or a VIP")
    return checker.issues


def service_clashes(rows: Sequence[tuple[object, object, object]]) -> Iterator[tuple[str, int, int]]:
    """The rules between services, in one place (validation here; the config cache, on
    models): each row is a service's (name, VIP + port + protocol of a service without
    filters, fwmark), None where there is nothing to compare. Yields (rule, i, first)
    for each service i that repeats what service ``first`` already has."""
    seen: tuple[dict, dict, dict] = ({}, {}, {})
    for i, row in enumerate(rows):
        for rule, key, firsts in zip(("name", "endpoint", "fwmark"), row, seen):
            if key is not None:
                first = firsts.setdefault(key, i)
                if first != i:
                    yield rule, i, first


def semantic_issues(data: object, lines: Lines) -> list[Issue]:
    """Stage 2: rules the schema cannot express. Values the schema rejected are skipped."""
    checker = _Semantics(lines)
    if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
        checker.metrics(("metrics", "listen"), data["metrics"].get("listen"))
    if isinstance(data, dict) and isinstance(data.get("services"), list):
        checker.services(data["services"])
    if isinstance(data, dict) and "ha" in data:
        checker.issues.extend(ha_issues(data, lines))
    if isinstance(data, dict) and "bgp" in data:
        from .bgp_rules import bgp_issues
        bgp_issues(data, lines, checker)
    return checker.issues
