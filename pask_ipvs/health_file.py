"""The health file: written by pask-healthd, read by pask-apply and pask-status.

{"version": 1, "servers": {"web/10.99.2.11:8080": {"up": false, "since": 1.7e9, "detail": "..."}}}

pask-apply reads it so that a reconcile never brings a failed server back to
full weight, and the daemon never fights pask-apply.
"""

from __future__ import annotations

import json

DEFAULT_HEALTH_FILE = "/var/lib/pask/health.json"
HEALTH_VERSION = 1


def health_key(service: str, addr: str, port: int) -> str:
    return f"{service}/{addr}:{port}"


def read_health_bytes(path: str | None) -> bytes:
    """The health file as it is now (b"" when there is none), for parse_health and digests."""
    if not path:
        return b""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def load_health(path: str | None) -> dict[str, bool]:
    """server key -> up. A missing file means nothing is known (every server counts as up)."""
    return parse_health(read_health_bytes(path), path or "")


def parse_health(raw: bytes, path: str) -> dict[str, bool]:
    """load_health of the bytes read_health_bytes gave."""
    return {k: bool(v.get("up", True)) for k, v in health_servers(raw, path).items()}


def health_servers(raw: bytes, path: str) -> dict[str, dict]:
    """server key -> its record ("up", "since", "detail") from the health file's bytes;
    ValueError when they are not a health file this version of pask reads."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"{path}: corrupt health file: {e}") from e
    if not isinstance(data, dict) or data.get("version") != HEALTH_VERSION:
        version = data.get("version") if isinstance(data, dict) else None
        raise ValueError(f"{path}: unsupported health file version {version!r}")
    servers = data.get("servers", {})
    if not isinstance(servers, dict) or not all(isinstance(v, dict) for v in servers.values()):
        raise ValueError(f"{path}: corrupt health file: 'servers' is not a mapping of records")
    return {k: dict(v) for k, v in servers.items()}
