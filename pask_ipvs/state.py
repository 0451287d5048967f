"""pask's state file: what pask owns in the kernel, and facts to carry between runs.

Ownership is by service: a service recorded here (or declared in the config)
is pask's wholly; any other IPVS service is foreign and never touched.
Written atomically (temp file + rename) so a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

from .kernel import DestKey, ServiceKey, VipAddress

DEFAULT_STATE_FILE = "/var/lib/pask/state.json"
DEFAULT_HEALTH_FILE = "/var/lib/pask/health.json"
STATE_VERSION = 1
FWMARK_BASE = 0x10000        # first fwmark pask allocates; below is left to other tools


@dataclass
class PaskState:
    services: dict[str, ServiceKey] = field(default_factory=dict)   # name -> key it was applied as
    fwmarks: dict[str, int] = field(default_factory=dict)           # name -> allocated fwmark
    nft_listing_digest: str | None = None
    vips: list[VipAddress] = field(default_factory=list)
    draining: dict[DestKey, float] = field(default_factory=dict)   # dest -> drain start (epoch s)
    # the last run that left the kernel verified equal to the config: digests of its
    # inputs and of the kernel it read, for the no-op fast path (cli.run_apply)
    fingerprint: dict | None = None

    # -- serialisation --------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "version": STATE_VERSION,
            "services": {n: _key_to_json(k) for n, k in sorted(self.services.items())},
            "fwmarks": dict(sorted(self.fwmarks.items())),
            "nft_listing_digest": self.nft_listing_digest,
            "vips": [[v.interface, v.addr, v.prefixlen] for v in sorted(self.vips)],
            "draining": [[_key_to_json(k.service), k.addr, k.port, t]
                         for k, t in sorted(self.draining.items())],
            **({"fingerprint": self.fingerprint} if self.fingerprint else {}),
        }

    @staticmethod
    def from_json(data: dict) -> "PaskState":
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported state file version {data.get('version')!r}")
        return PaskState(
            services={n: _key_from_json(k) for n, k in data.get("services", {}).items()},
            fwmarks={n: int(m) for n, m in data.get("fwmarks", {}).items()},
            nft_listing_digest=data.get("nft_listing_digest"),
            vips=[VipAddress(i, a, int(p)) for i, a, p in data.get("vips", [])],
            draining={DestKey(_key_from_json(s), a, int(p)): float(t)
                      for s, a, p, t in data.get("draining", [])},
            fingerprint=_fingerprint_from_json(data.get("fingerprint")),
        )

    def inputs_digest(self, code: bytes, config_text: str, health: bytes) -> str:
        """Everything a plan depends on but the kernel: pask's code, the config file,
        the health file, and what this state says pask owns. Equal digests: the same
        desired state (and, with an equal kernel fingerprint, the same empty plan)."""
        h = hashlib.blake2b(code, digest_size=32)
        owned = json.dumps({k: v for k, v in self.to_json().items() if k != "fingerprint"},
                           sort_keys=True)
        for part in (config_text.encode(), health, owned.encode()):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        return h.hexdigest()


def _fingerprint_from_json(value: object) -> dict | None:
    """A fingerprint from an older or hand-edited file is dropped: it only ever saves time."""
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) for k in ("inputs", "kernel")):
        return None
    if not isinstance(value.get("sysctls"), list):
        return None
    return value


def _key_to_json(k: ServiceKey) -> list:
    return [k.protocol, k.addr, k.port, k.fwmark, k.af]


def _key_from_json(v: list) -> ServiceKey:
    proto, addr, port, fwmark, af = v
    return ServiceKey(proto, addr, int(port), int(fwmark), int(af))


def load_state(path: str) -> PaskState:
    """A missing file is an empty state (first run); a corrupt one is an error, never ignored."""
    try:
        with open(path, encoding="utf-8") as f:
            return PaskState.from_json(json.load(f))
    except FileNotFoundError:
        return PaskState()
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: corrupt state file: {e}") from e


def save_state(path: str, state: PaskState) -> None:
    write_json_atomic(path, state.to_json())


def write_json_atomic(path: str, data: object) -> None:
    write_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def write_atomic(path: str, data: bytes, dir_mode: int = 0o755) -> None:
    """Write a private (0600) file whole or not at all: a temp file beside it, renamed
    over it. (Not tempfile: importing it costs the no-op fast path a tenth of a second
    under emulation. The pid makes the temp name this process's own; pask writes
    each file from one thread.)"""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=dir_mode, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.path.basename(path)}.{os.getpid()}")
    try:
        os.unlink(tmp)                      # left by a crashed run with this pid
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def allocate_fwmarks(names_needing: list[str], explicit: dict[str, int],
                     previous: dict[str, int]) -> dict[str, int]:
    """Stable fwmarks: explicit ones win, a service keeps its mark, new ones take the lowest free."""
    out: dict[str, int] = {}
    used = set(explicit.values())
    for name in names_needing:
        if name in explicit:
            out[name] = explicit[name]
    for name in names_needing:
        if name not in out and name in previous and previous[name] not in used:
            out[name] = previous[name]
            used.add(previous[name])
    nxt = FWMARK_BASE
    for name in names_needing:
        if name in out:
            continue
        while nxt in used:
            nxt += 1
        out[name] = nxt
        used.add(nxt)
    return out


# -- health file: written by pask-healthd, read by pask-apply -------------------
# {"version": 1, "servers": {"web/10.99.2.11:8080": {"up": false, "since": 1.7e9, "detail": "..."}}}
# pask-apply reads it so that a reconcile never brings a failed server back to
# full weight, and the daemon never fights pask-apply.

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
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        version = data.get("version") if isinstance(data, dict) else None
        raise ValueError(f"{path}: unsupported health file version {version!r}")
    servers = data.get("servers", {})
    if not isinstance(servers, dict) or not all(isinstance(v, dict) for v in servers.values()):
        raise ValueError(f"{path}: corrupt health file: 'servers' is not a mapping of records")
    return {k: dict(v) for k, v in servers.items()}


class locked:
    """flock on ``<state file>.lock``: one pask-apply (or healthd write) at a time.

    Non-blocking: a second apply fails at once with a clear message rather than
    queueing behind a long one. Read-only runs take a shared lock.
    """

    def __init__(self, state_file: str, exclusive: bool = True):
        self.path = f"{state_file}.lock"
        self.exclusive = exclusive
        self._fd: int | None = None

    def __enter__(self) -> "locked":
        import fcntl
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            if not self.exclusive:
                return self  # a read-only dry run by a user who cannot write /var/lib/pask
            raise
        fcntl.flock(self._fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
