#!/usr/bin/env python3
"""Native CPU of a fresh pask-apply after one real server's weight was edited, 1024 x 32,
with IPVS read through the kernel backend's own code; source trees side by side.

    python bench/edit_bench.py [--config examples/scale-1024.yaml] [--runs 5] TREE [TREE ...]

Per tree, once: a cold apply_config on the fake backends (state file, config cache and
the fake kernel kept). Then, per run, a fresh child process (bytecode as a deployed pask
has it) takes a copy of those, edits one weight in the config (one service in the
middle of the file) and runs apply_config with every fake backend but IPVS: that is
``IpvsNetlink`` reading from a stand-in socket that answers dumps and GET_SERVICE
requests from the fake kernel's table in Linux 6.1's reply layout (counters, tunnel
settings, both stats nests); its writes go to the fake table. The stand-in's own CPU
(building the replies) is taken off. Stages are timed as in bench/cold_bench.py; each
number is the best of the runs, runs of the trees alternating. The run must plan and
write exactly one op, and verify.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from cold_bench import keep_best, print_table     # noqa: E402  (one table for both benches)
EDITED_SERVICE = "svc-00512"

STAGES = [
    ("pask_ipvs.fastpath.noop", "kernel_unchanged", "no-op check (kernel digest)"),
    ("pask_ipvs.fastpath.config_cache", "ConfigCache.load", "config (cache)"),
    ("pask_ipvs.desired", "expand", "expand"),
    ("pask_ipvs.observe", "observe", "observe (whole table)"),
    ("pask_ipvs.observe", "observe_ipvs_by_digests", "observe IPVS by digests"),
    ("pask_ipvs.backend.ipvs", "IpvsNetlink.service_digests", "  the kernel's digests (scan)"),
    ("pask_ipvs.backend.ipvs", "IpvsNetlink.expected_digests", "  the desired digests (encode)"),
    ("pask_ipvs.backend.ipvs", "IpvsNetlink.observe_services", "  services decoded"),
    ("pask_ipvs.plan", "diff", "diff (plan and verify)"),
    ("pask_ipvs.apply", "execute", "apply"),
    ("pask_ipvs.verify", "verify", "verify"),
    ("pask_ipvs.fastpath.noop", "record_verified", "fingerprint recorded"),
    ("pask_ipvs.state", "save_state", "state write"),
    ("pask_ipvs.fastpath.config_cache", "ConfigCache.save", "config cache write"),
]


def edit_one_weight(text: str) -> str:
    at = text.index(f"- name: {EDITED_SERVICE}\n")
    rs = text.index("port: 8080}", at)
    return text[:rs] + "port: 8080, weight: 3}" + text[rs + len("port: 8080}"):]


class StandIn:
    """The kernel's side of IpvsNetlink's socket, answering from a FakeIpvs table."""

    def __init__(self, fake, family: int):
        from pask_ipvs.backend import ipvs_codec as w, netlink as nl
        self.w, self.nl, self.fake, self.family = w, nl, fake, family
        self.enc = w.IpvsEncoder(family)
        self.replies: deque[bytes] = deque()
        self.cpu = 0.0
        sys.path.insert(0, HERE)
        from verify_bench import kernel_dest_reply
        self.dest_reply = kernel_dest_reply

    def _by_nest(self):
        return {self.enc.service_key_nest(k): k for k in self.fake.services}

    def send(self, data) -> int:
        t = time.process_time()
        try:
            return self._send(bytes(data))
        finally:
            self.cpu += time.process_time() - t

    sendall = send

    def _msg(self, flags: int, seq: int, cmd: int, attrs: bytes) -> bytes:
        return self.nl.message(self.family, flags, seq, cmd, 1, attrs)

    def _done(self, seq: int) -> bytes:
        nl = self.nl
        return nl.NLMSG_HDR.pack(nl.NLMSG_HDR.size + 4, nl.NLMSG_DONE, nl.NLM_F_MULTI, seq, 0) + bytes(4)

    def _err(self, seq: int, code: int) -> bytes:
        nl = self.nl
        return nl.NLMSG_HDR.pack(nl.NLMSG_HDR.size + 4 + 16, nl.NLMSG_ERROR, 0, seq, 0) + \
            struct.pack("=i", -code) + bytes(16)

    def _skbs(self, messages: list[bytes], seq: int) -> None:
        cur = b""
        for m in messages:
            if cur and len(cur) + len(m) > 4096:
                self.replies.append(cur)
                cur = b""
            cur += m
        self.replies.append(cur + self._done(seq))

    def _send(self, data: bytes) -> int:
        import errno
        nl, w = self.nl, self.w
        kernel_dest_reply = self.dest_reply
        for hdr in nl.iter_messages(data, len(data)):
            cmd = data[hdr.start]
            attrs = data[hdr.start + nl.GENL_HDR.size:hdr.end]
            if cmd == w.IPVS_CMD_GET_SERVICE and not attrs:
                self._skbs([self._msg(nl.NLM_F_MULTI, hdr.seq, w.IPVS_CMD_NEW_SERVICE,
                                      nl.nla_nest(w.IPVS_CMD_ATTR_SERVICE, w.service_attrs(s)))
                            for s in self.fake.services.values()], hdr.seq)
            elif cmd == w.IPVS_CMD_GET_SERVICE:
                key = self._by_nest().get(attrs)
                if key is None:
                    self.replies.append(self._err(hdr.seq, errno.ESRCH))
                else:
                    self.replies.append(self._msg(0, hdr.seq, w.IPVS_CMD_NEW_SERVICE, nl.nla_nest(
                        w.IPVS_CMD_ATTR_SERVICE, w.service_attrs(self.fake.services[key]))))
            elif cmd == w.IPVS_CMD_GET_DEST:
                key = self._by_nest().get(attrs)
                if key is None:
                    self.replies.append(self._err(hdr.seq, errno.ESRCH))
                    continue
                msgs = []
                for d in self.fake.dests[key].values():
                    m = bytearray(kernel_dest_reply(d, 0))
                    struct.pack_into("=I", m, 8, hdr.seq)
                    msgs.append(bytes(m))
                self._skbs(msgs, hdr.seq)
            elif cmd in _WRITES:      # table changes are the fake's (see real_ipvs_on)
                if hdr.flags & nl.NLM_F_ACK:
                    self.replies.append(self._err(hdr.seq, 0))
            else:
                raise AssertionError(f"stand-in: unexpected command {cmd}")
        return len(data)

    def recv_into(self, buf: bytearray, nbytes: int = 0, flags: int = 0) -> int:
        data = self.replies.popleft()
        buf[:len(data)] = data
        return len(data)


_WRITES = frozenset(range(1, 8)) - {4}     # IPVS_CMD_{NEW,SET,DEL}_{SERVICE,DEST}


def real_ipvs_on(fake, mirror_writes: bool = False):
    """IpvsNetlink reading ``fake``'s table through the stand-in. Its writes go to the fake
    table; with ``mirror_writes`` they are also encoded and sent by IpvsNetlink.apply
    itself (the stand-in acks them), so its memory and CPU are those of the real backend."""
    from pask_ipvs.backend import ipvs as ipvs_mod, ipvs_codec as w
    sock = StandIn(fake, 0x20)
    real = ipvs_mod.IpvsNetlink()
    conn = ipvs_mod._Conn.__new__(ipvs_mod._Conn)
    conn.sock, conn.buf, conn._seq = sock, bytearray(ipvs_mod.RECV_CHUNK), 0
    real._conn, real._encoder = conn, w.IpvsEncoder(0x20)
    if mirror_writes:
        send = real.apply

        def apply(ops):
            errors = fake.apply(ops)
            assert not send(ops) and not errors
            return errors
        real.apply = apply
    else:
        real.apply = fake.apply                  # writes: to the fake table
    real.missing_schedulers = fake.missing_schedulers
    return real, sock


def setup(tree: str, config: str, out_dir: str) -> None:
    """The cold apply (fakes), its state, cache and fake kernel kept in ``out_dir``."""
    sys.path.insert(0, tree)
    from pask_ipvs.backend.fake import fake_backends
    from pask_ipvs.pipeline import ApplyRequest, apply_config
    shutil.copy(config, os.path.join(out_dir, "pask.yaml"))
    request = ApplyRequest(config=os.path.join(out_dir, "pask.yaml"),
                           state_file=os.path.join(out_dir, "state.json"),
                           health_file=os.path.join(out_dir, "health.json"), quiet=True)
    b = fake_backends()
    report = apply_config(request, lambda: b, Quiet())
    assert not report["errors"] and report["verified"], report["errors"]
    with open(os.path.join(out_dir, "kernel.pickle"), "wb") as f:
        pickle.dump(b, f, pickle.HIGHEST_PROTOCOL)


class Quiet:
    def info(self, msg): pass
    def progress(self, msg): pass
    def error(self, msg): print(msg, file=sys.stderr)


def child(tree: str, setup_dir: str) -> dict:
    sys.path.insert(0, tree)
    sys.path.insert(1, HERE)
    import cold_bench
    with tempfile.TemporaryDirectory() as d:
        for name in ("pask.yaml", "state.json", "config-cache.pickle"):
            shutil.copy2(os.path.join(setup_dir, name), os.path.join(d, name))
        os.chmod(os.path.join(d, "config-cache.pickle"), 0o600)
        with open(os.path.join(d, "pask.yaml")) as f:
            text = f.read()
        with open(os.path.join(d, "pask.yaml"), "w") as f:
            f.write(edit_one_weight(text))
        t0 = time.process_time()
        from pask_ipvs.backend.fake import kernel_writes
        from pask_ipvs.pipeline import ApplyRequest, apply_config
        imports = time.process_time() - t0
        with open(os.path.join(setup_dir, "kernel.pickle"), "rb") as f:
            b = pickle.load(f)
        fake = b.ipvs
        real, sock = real_ipvs_on(fake)
        writes_before = kernel_writes(b)
        b.ipvs = real
        # every stage's CPU without the stand-in's (which runs inside observe and verify)
        cold_bench.time = type("Clock", (), {"process_time": staticmethod(
            lambda: time.process_time() - sock.cpu)})
        timer = cold_bench.Timer()
        for mod, attr, label in STAGES:
            owner = importlib.import_module(mod)
            if "." in attr:
                cls, attr = attr.split(".")
                owner = getattr(owner, cls)
            if getattr(owner, attr, None) is None:
                continue
            orig = getattr(owner, attr)
            timer.wrap(owner, attr, label)
            for m in list(sys.modules.values()):       # imported by name elsewhere
                if getattr(m, "__name__", "").startswith("pask_ipvs") and m is not owner \
                        and getattr(m, attr, None) is orig:
                    timer.wrap(m, attr, label)
        request = ApplyRequest(config=os.path.join(d, "pask.yaml"),
                               state_file=os.path.join(d, "state.json"),
                               health_file=os.path.join(d, "health.json"), quiet=True)
        t = time.process_time()
        report = apply_config(request, lambda: b, Quiet())
        total = time.process_time() - t - sock.cpu
        assert not report["errors"] and report["verified"], report["errors"]
        assert report["counts"] == {"add": 0, "set": 1, "delete": 0, "replace": 0}, report["counts"]
        b.ipvs = fake
        assert kernel_writes(b) - writes_before == 1, kernel_writes(b) - writes_before
        out = {"imports (pask + backend)": imports}
        out.update(timer.rec)
        out["stand-in socket (taken off)"] = sock.cpu
        out["apply_config total"] = total
        return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="examples/scale-1024.yaml")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--setup", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("trees", nargs="*")
    args = p.parse_args(argv)
    if args.setup:
        setup(args.setup[0], os.path.abspath(args.config), args.setup[1])
        return 0
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    trees = [os.path.abspath(t) for t in args.trees] or [os.path.dirname(HERE)]
    work = tempfile.TemporaryDirectory()
    envs, dirs = [], []
    for i, tree in enumerate(trees):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = os.path.join(work.name, f"pyc{i}")
        envs.append(env)
        dirs.append(os.path.join(work.name, f"setup{i}"))
        os.mkdir(dirs[-1])
        subprocess.run([sys.executable, os.path.abspath(__file__), "--config", args.config,
                        "--setup", tree, dirs[-1]], check=True, env=env)
    best: list[dict[str, float]] = [{} for _ in trees]
    for run in range(args.runs + 1):
        for i, tree in enumerate(trees):
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", tree, dirs[i]],
                               capture_output=True, text=True, env=envs[i])
            if r.returncode:
                sys.exit(f"{tree}: {r.stderr}")
            if run == 0:
                continue                 # bytecode written, caches warm on disk
            keep_best(best[i], r.stdout)
    work.cleanup()
    print_table(f"one weight edited, fresh apply (native CPU s, best of {args.runs})", trees, best,
                ["imports (pask + backend)"] + [s[2] for s in STAGES])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
