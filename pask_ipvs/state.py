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

from .objects import DestKey, Engine, ServiceKey, SyncDaemon, VipAddress
from .storage import write_json_atomic

DEFAULT_STATE_FILE = "/var/lib/pask/state.json"
STATE_VERSION = 1


@dataclass
class PaskState:
    services: dict[str, ServiceKey] = field(default_factory=dict)   # name -> key it was applied as
    fwmarks: dict[str, int] = field(default_factory=dict)           # name -> allocated fwmark
    nft_listing_digest: str | None = None
    vips: list[VipAddress] = field(default_factory=list)
    draining: dict[DestKey, float] = field(default_factory=dict)   # dest -> drain start (epoch s)
    # ha: the IPVS sync threads and the engines pask started, so that a config without
    # them stops them (an engine is found again by its command line; its files don't matter)
    sync_daemons: list[SyncDaemon] = field(default_factory=list)
    engines: dict[str, Engine] = field(default_factory=dict)
    # the last run that left the kernel verified equal to the config: digests of its
    # inputs and of the kernel it read, for the no-op fast path (fastpath/)
    last_verified: dict | None = None

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
            **({"sync_daemons": [list(d) for d in sorted(self.sync_daemons)]} if self.sync_daemons else {}),
            **({"engines": {n: {"argv": list(e.argv), "foreground_argv": list(e.foreground_argv)}
                            for n, e in sorted(self.engines.items())}} if self.engines else {}),
            **({"fingerprint": self.last_verified} if self.last_verified else {}),
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
            last_verified=_last_verified_from_json(data.get("fingerprint")),
            sync_daemons=[SyncDaemon(st, ifn, int(i)) for st, ifn, i in data.get("sync_daemons", [])],
            engines={n: Engine(n, (), tuple(e["argv"]), tuple(e["foreground_argv"]))
                     for n, e in data.get("engines", {}).items()},
        )

    def inputs_digest(self, code: bytes, config_text: "str | ConfigDigest", health: bytes) -> str:
        """Everything a plan depends on but the kernel: pask's code, the config file,
        the health file, and what this state says pask owns. Equal digests: the same
        desired state (and, with an equal kernel digest, the same empty plan).
        ``config_text`` may be given as its ConfigDigest (the same result; a run need
        not keep a big file's text until the end)."""
        if not isinstance(config_text, ConfigDigest):
            config_text = ConfigDigest(code, config_text)
        h = config_text.hasher(code)
        owned = json.dumps({k: v for k, v in self.to_json().items() if k not in _NOT_INPUTS},
                           sort_keys=True)
        for part in (health, owned.encode()):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        return h.hexdigest()


class ConfigDigest:
    """PaskState.inputs_digest's hash of pask's code and the config text, made once: it
    stands for the text (kept whole, a 1024 x 32 file is 1.5 MB for the whole run)."""

    __slots__ = ("_code", "_h")

    def __init__(self, code: bytes, config_text: str) -> None:
        part = config_text.encode()
        self._code = code
        self._h = hashlib.blake2b(code, digest_size=32)
        self._h.update(len(part).to_bytes(8, "little"))
        self._h.update(part)

    def hasher(self, code: bytes) -> "hashlib._Hash":
        if code != self._code:
            raise ValueError("ConfigDigest made with another code digest")
        return self._h.copy()


_NOT_INPUTS = ("fingerprint",)     # records of runs, not what pask owns


def _last_verified_from_json(value: object) -> dict | None:
    """A verified-run record from an older or hand-edited file is dropped: it only ever saves time."""
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


# -- when pask-apply last left the kernel verified ---------------------------------------
# The mtime of an empty file beside the state file: a no-op run (most runs) records it
# with one utime, instead of rewriting the whole state file for one number.

def applied_marker_for(state_file: str) -> str:
    return f"{state_file}.applied"


def mark_applied(state_file: str, when: float | None = None) -> None:
    """Record that a run has just (or at ``when``, epoch s) left the kernel verified."""
    path = applied_marker_for(state_file)
    try:
        os.utime(path, None if when is None else (when, when))
    except FileNotFoundError:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        if when is not None:
            os.utime(path, (when, when))


def last_applied(state_file: str) -> float | None:
    """Epoch s of the last verified apply; None if none was ever recorded."""
    try:
        return os.stat(applied_marker_for(state_file)).st_mtime
    except FileNotFoundError:
        return None
