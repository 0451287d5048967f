#!/usr/bin/env python3
"""pask-apply at scale, measured inside ONE boot of the IPVS VM (bench/run.sh boots it).

    # cold apply from an empty kernel, no-op apply, one weight changed (pask-apply), then
    # the same change back through pask-healthd's SIGHUP reload (keepalived's way)
    python bench/scale.py run examples/scale-1024.yaml --meta M.meta.json --changed M.changed.yaml
    # cold apply only (the scaling runs)
    python bench/scale.py run /tmp/scale-4096.yaml --meta M.meta.json --cold-only
    # no-op applies in another tool's boot, on the table it left (after peers.py keepalived)
    python bench/scale.py noop M.changed.yaml --out noop.json
    # what a fresh process pays before pask's own work (interpreter, imports, PyYAML)
    python bench/scale.py floor examples/scale-1024.yaml --out floor.json
    # where the time goes: per-stage wall times (no profiler overhead), or cProfile
    python bench/scale.py profile examples/scale-1024.yaml --out-dir DIR --mode stages
    python bench/scale.py profile examples/scale-1024.yaml --out-dir DIR --mode cprofile

Every number includes the interpreter start: pask-apply runs as a child
process, timed from fork to exit; its peak RSS comes from wait4()'s rusage
(ru_maxrss of that child alone). The no-op and change runs use
``--format json --detailed-exitcode``: ``ops == []`` and exit 0 means pask made
no kernel write; one op and exit 2 means exactly one.

The cold apply must meet an empty kernel that has never held a big table (a
kernel that just cleared one refills ~3x slower): ``run`` refuses a kernel
that already holds IPVS objects. Before timing, the Python files, the
config and the tools are read once (a read-only ``--dry-run`` of the demo
config), so that the VM's 9p file system does not put its cold-cache cost on
whichever tool runs first; keepalived and ipvsadm get the same (bench/peers.py).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYENV_PY = "/root/.pyenv/versions/3.11.7/bin/python"
sys.path.insert(0, HERE)
from peers import _env, _emit, calibrate, dest_weight, ipvs_objects, save_table, wait_until  # noqa: E402


def python() -> str:
    venv = os.path.join(ROOT, ".venv", "bin", "python")
    return venv if os.access(venv, os.X_OK) else PYENV_PY


def pask_apply() -> list[str]:
    """The command users run: the venv's console script, else the module by full path."""
    script = os.path.join(ROOT, ".venv", "bin", "pask-apply")
    if os.access(script, os.X_OK):
        return [script]
    return [PYENV_PY, "-m", "pask_ipvs.cli", "apply"]


def pask_healthd() -> list[str]:
    script = os.path.join(ROOT, ".venv", "bin", "pask-healthd")
    if os.access(script, os.X_OK):
        return [script]
    return [PYENV_PY, "-m", "pask_ipvs.cli.healthd"]


def pask_source() -> dict:
    """Which pask was measured: the commit, and a digest of the pask_ipvs sources as they
    were (the tree may hold uncommitted work)."""
    import hashlib
    h = hashlib.sha256()
    pkg = os.path.join(ROOT, "pask_ipvs")
    for dirpath, dirnames, filenames in sorted(os.walk(pkg)):
        dirnames.sort()
        for fn in sorted(filenames):
            if fn.endswith((".py", ".json")):
                path = os.path.join(dirpath, fn)
                h.update(os.path.relpath(path, pkg).encode())
                with open(path, "rb") as f:
                    h.update(f.read())
    head = ""
    try:
        with open(os.path.join(ROOT, ".git", "HEAD")) as f:
            head = f.read().strip()
        if head.startswith("ref: "):
            with open(os.path.join(ROOT, ".git", head[5:])) as f:
                head = f.read().strip()
    except OSError:
        pass
    return {"commit": head[:12], "sources_sha256": h.hexdigest()[:12]}


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def timed(cmd: list[str], out_path: str) -> dict:
    """Run ``cmd`` to completion; wall seconds (fork to reap), exit code, peak RSS, CPU."""
    with open(out_path, "wb") as out, open(out_path + ".err", "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, env=_child_env())
        _, status, ru = os.wait4(p.pid, 0)
        took = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    with open(out_path + ".err", "rb") as f:
        err_tail = f.read()[-1500:].decode(errors="replace")
    return {"s": round(took, 3), "rc": p.returncode, "peak_rss_kb": ru.ru_maxrss,
            "user_s": round(ru.ru_utime, 3), "sys_s": round(ru.ru_stime, 3), "stderr_tail": err_tail}


def _pask(tmp: str, *extra: str) -> list[str]:
    return [*pask_apply(), "--state-file", os.path.join(tmp, "state.json"),
            "--health-file", os.path.join(tmp, "health.json"), *extra]


def warm_up(config: str, tmp: str) -> dict:
    """Read the files every timed run needs once; change nothing in the kernel."""
    with open(config, "rb") as f:
        f.read()
    wtmp = os.path.join(tmp, "warm")
    os.makedirs(wtmp, exist_ok=True)
    r = timed(_pask(wtmp, "--dry-run", "-q", os.path.join(ROOT, "examples", "demo.yaml")),
              os.path.join(wtmp, "out"))
    imports = ("import pask_ipvs.cli, pask_ipvs.apply, pask_ipvs.load, pask_ipvs.validate, "
               "pask_ipvs.desired, pask_ipvs.plan, pask_ipvs.render.text, pask_ipvs.backend.real, "
               "pask_ipvs.backend.ipvs, pask_ipvs.backend.nft, pask_ipvs.backend.addr, "
               "pask_ipvs.backend.sysctl, pyroute2, nftables, yaml, jsonschema, cProfile, pstats")
    subprocess.run([python(), "-c", imports], cwd=ROOT, env=_child_env(), capture_output=True)
    n, _ = ipvs_objects()
    if n:
        raise SystemExit(f"scale: the warm-up dry run left {n} IPVS objects in the kernel")
    return {"first_dry_run_s": r["s"], "rc": r["rc"]}


def _json_out(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _require_fresh(result: dict) -> None:
    n, _ = ipvs_objects()
    result["kernel_objects_before"] = n
    if n:
        raise SystemExit(f"scale: the kernel already holds {n} IPVS objects; "
                         "a cold apply is measured on a fresh boot only")


STATE_FILES = ("state.json", "config-cache.pickle")   # what pask keeps in its state directory


def cmd_run(args: argparse.Namespace) -> int:
    meta = _json_out(args.meta) if args.meta else None
    want = meta["objects"] if meta else args.expect
    name = meta["name"] if meta else os.path.splitext(os.path.basename(args.config))[0]
    tmp = tempfile.mkdtemp(prefix="paskbench-")
    result: dict = {"tool": "pask-apply", "scenario": name, "objects": want, "env": _env(),
                    "command": pask_apply(), "config": args.config, "pask": pask_source()}
    _require_fresh(result)
    result["warm_up"] = warm_up(args.config, tmp)
    if args.state_from:     # a reboot: the kernel is empty, /var/lib/pask is as it was
        for name in STATE_FILES:
            shutil.copy2(os.path.join(args.state_from, name), os.path.join(tmp, name))
        result["state_from"] = args.state_from

    # (1) cold apply from an empty kernel; the CPU calibration right before and after it
    # tells whether the machine was as fast during this run as during the others
    calib_before = calibrate()
    cold = timed(_pask(tmp, args.config), os.path.join(tmp, "cold.out"))
    n, _ = ipvs_objects()
    cold.update(kernel_objects=n, ok=cold["rc"] == 0 and (want is None or n == want),
                calib_s=[calib_before, calibrate()])
    with open(os.path.join(tmp, "cold.out")) as f:
        cold["stdout_tail"] = f.read()[-300:]
    result["cold"] = cold
    if not cold["ok"]:
        _emit(result, args.out)
        return 1
    cold["table"] = save_table(args.out)
    if args.cold_only:
        _emit(result, args.out)
        return 0

    # (2) no-op apply: the same config again
    result["noop"] = noop_runs(tmp, args.config, NOOP_RUNS)
    if args.save_state:     # what a later boot starts from (run --state-from)
        os.makedirs(args.save_state, exist_ok=True)
        for name in STATE_FILES:
            shutil.copy2(os.path.join(tmp, name), os.path.join(args.save_state, name))

    # (3) one real server's weight changed
    if args.changed:
        ch = timed(_pask(tmp, "--format", "json", "--detailed-exitcode", args.changed),
                   os.path.join(tmp, "change.json"))
        rep = _json_out(os.path.join(tmp, "change.json")) or {}
        ops = rep.get("ops") or []
        ch.update(ops=len(ops), op=[f"{o.get('action')} {o.get('kind')} {o.get('key')}" for o in ops][:5],
                  verified=rep.get("verified"))
        if meta and meta.get("change"):
            c = meta["change"]
            ch["kernel_weight"] = dest_weight(c["ipvsadm_service"], c["dest"])
            ch["want_weight"] = c["new_weight"]
        ch["ok"] = ch["rc"] == 2 and len(ops) == 1 and ch.get("kernel_weight") == ch.get("want_weight")
        result["change"] = ch
        if meta and meta.get("change") and ch["ok"] and not args.no_healthd:
            result["healthd_reload"] = healthd_reload(tmp, args.changed, args.config, meta["change"],
                                                      args.timeout)
    _emit(result, args.out)
    ok = result["noop"]["ok"] and all(result.get(k, {"ok": True})["ok"]
                                      for k in ("change", "healthd_reload"))
    return 0 if ok else 1


NOOP_RUNS = 3     # the machine is shared: the median of three, every run listed


def noop_runs(tmp: str, config: str, runs: int) -> dict:
    """``runs`` no-op applies of ``config`` against what the kernel holds; the result
    is the median run (by time) with every run's seconds, ok only if each made no op."""
    done = []
    for i in range(runs):
        out = os.path.join(tmp, f"noop-{i}.json")
        r = timed(_pask(tmp, "--format", "json", "--detailed-exitcode", config), out)
        rep = _json_out(out) or {}
        ops = rep.get("ops")
        r.update(ops=None if ops is None else len(ops), verified=rep.get("verified"),
                 ok=r["rc"] == 0 and ops == [])
        done.append(r)
    median = sorted(done, key=lambda r: r["s"])[len(done) // 2]
    return dict(median, runs_s=[r["s"] for r in done], ok=all(r["ok"] for r in done))


def cmd_noop(args: argparse.Namespace) -> int:
    """The no-op apply in the boot of another tool (bench/run.sh: right after keepalived,
    whose table stays when it is killed), so its ratio to that tool's cold start is
    measured side by side, on one machine speed: pask first adopts the table (a full
    run, not timed), then the no-op runs are timed."""
    tmp = tempfile.mkdtemp(prefix="paskbench-noop-")
    result: dict = {"tool": "pask-apply", "scenario": "noop-after-peer", "config": args.config,
                    "command": pask_apply(), "pask": pask_source(), "env": _env()}
    n, _ = ipvs_objects()
    result["kernel_objects_before"] = n
    adopt = timed(_pask(tmp, "--format", "json", "--detailed-exitcode", args.config),
                  os.path.join(tmp, "adopt.json"))
    rep = _json_out(os.path.join(tmp, "adopt.json")) or {}
    adopt.update(ops=len(rep.get("ops") or []), verified=rep.get("verified"),
                 ok=adopt["rc"] in (0, 2) and rep.get("verified") is True)
    result["adopt"] = {k: v for k, v in adopt.items() if k != "stderr_tail"}
    if not adopt["ok"]:
        result["adopt"]["stderr_tail"] = adopt["stderr_tail"]
        _emit(result, args.out)
        return 1
    result["calib_s"] = calibrate()
    result["noop"] = noop_runs(tmp, args.config, args.runs)
    _emit(result, args.out)
    return 0 if result["noop"]["ok"] else 1


def _events(path: str) -> list[dict]:
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    return out


def healthd_reload(tmp: str, running: str, edited: str, change: dict, timeout: float) -> dict:
    """The same single change made the keepalived way: pask-healthd (a resident process,
    like keepalived) runs with ``running`` (what the kernel holds now), the file is
    replaced by ``edited`` (the change run's weight back to the old one), SIGHUP; timed
    from the signal until the kernel shows the weight, as peers.py times keepalived."""
    conf = os.path.join(tmp, "healthd.yaml")
    shutil.copyfile(running, conf)
    log_path = os.path.join(tmp, "healthd.log")
    out: dict = {"command": pask_healthd()}
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [*pask_healthd(), conf, "--state-file", os.path.join(tmp, "state.json"),
             "--health-file", os.path.join(tmp, "health.json")],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=_child_env())
    try:
        ready, _, _ = wait_until(lambda: proc.poll() is not None or
                                 any(e.get("event") == "ready" for e in _events(log_path)),
                                 timeout, 0.05)
        out["start_s"] = round(time.perf_counter() - t0, 3)
        if not ready or proc.poll() is not None:
            out.update(ok=False, log_tail=open(log_path, errors="replace").read()[-1500:])
            return out
        want = change["old_weight"]
        out["weight_before"] = dest_weight(change["ipvsadm_service"], change["dest"])
        shutil.copyfile(edited, conf + ".new")
        os.replace(conf + ".new", conf)
        t1 = time.perf_counter()
        os.kill(proc.pid, signal.SIGHUP)
        met, _, polls = wait_until(
            lambda: dest_weight(change["ipvsadm_service"], change["dest"]) == want, timeout, 0.05)
        out.update(reload_s=round(time.perf_counter() - t1, 3), reload_polls=polls,
                   kernel_weight=dest_weight(change["ipvsadm_service"], change["dest"]),
                   want_weight=want)
        # the reload's drift check (resync) runs after its write: wait for the loop to
        # take the next signal, which it does only once the resync is done
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = _events(log_path)
    after = [e for e in events[next((i for i, e in enumerate(events) if e.get("event") == "reload"),
                                    len(events)):]]
    writes = [e for e in after if e.get("event") == "kernel"]
    reload_ev = next((e for e in after if e.get("event") == "reload"), {})
    out.update(ops=len(writes), op=[e.get("op") for e in writes][:5], changed=reload_ev.get("changed"),
               drift=[e for e in after if e.get("event") == "drift"][:3], rc=proc.returncode,
               ok=met and len(writes) == 1 and proc.returncode == 0)
    if not out["ok"]:
        out["log_tail"] = open(log_path, errors="replace").read()[-1500:]
    return out


# -- where the time goes ---------------------------------------------------------------

class StageTimer:
    """Time per pipeline function, with no profiler overhead: by call path, wall clock (the
    profile boot), or with ``by_path=False`` by label, the outermost call only (re-entry
    is not counted twice), on any ``clock`` (bench/cold_bench.py: process CPU per stage).

    Wraps module attributes (and backend methods) in place; pipeline.apply_config
    imports its steps at call time, so it picks the wrapped ones up."""

    def __init__(self, clock=time.perf_counter, by_path: bool = True) -> None:
        self.clock = clock
        self.by_path = by_path
        self.stack: list[str] = []
        self.rec: dict[tuple[str, ...], list[float]] = {}

    def wrap(self, owner: object, attr: str, label: str) -> None:
        orig = getattr(owner, attr, None)
        if orig is None or getattr(orig, "_bench_wrapped", False):
            return

        @functools.wraps(orig)
        def timed_call(*a, **k):
            if not self.by_path and label in self.stack:
                return orig(*a, **k)
            path = (*self.stack, label) if self.by_path else (label,)
            self.stack.append(label)
            t = self.clock()
            try:
                r = orig(*a, **k)
                if inspect.isgenerator(r):
                    r = iter(list(r))
                return r
            finally:
                dt = self.clock() - t
                self.stack.pop()
                slot = self.rec.setdefault(path, [0.0, 0])
                slot[0] += dt
                slot[1] += 1

        timed_call._bench_wrapped = True
        setattr(owner, attr, timed_call)

    def rows(self) -> list[dict]:
        return [{"path": " > ".join(p), "s": round(v[0], 4), "calls": v[1]}
                for p, v in sorted(self.rec.items())]

    def totals(self) -> dict[str, float]:
        """Seconds by path (by label with by_path=False)."""
        return {" > ".join(p): v[0] for p, v in self.rec.items()}


STAGES = [  # (module, attribute, label); a class name in the module means its method.
    # A function imported by name at a module's top is wrapped there too (same label).
    ("pask_ipvs.fastpath.config_cache", "ConfigCache.load", "config (cache, else load_config)"),
    ("pask_ipvs.fastpath.config_cache", "_load_items", "changed services parsed"),
    ("pask_ipvs.load", "load_config", "load_config"),
    ("pask_ipvs.yaml_fast", "read_fast", "yaml load (fast reader)"),
    ("pask_ipvs.load", "read_exact", "yaml load (exact reader)"),
    ("pask_ipvs.validate", "validate", "validate"),
    ("pask_ipvs.validate", "schema_issues", "schema validation"),
    ("pask_ipvs.validate", "semantic_issues", "semantic checks"),
    ("pask_ipvs.model", "build_model", "build model"),
    ("pask_ipvs.state", "load_state", "state read"),
    ("pask_ipvs.health_file", "parse_health", "health read"),
    ("pask_ipvs.fwmarks", "fwmarks_for", "fwmarks"),
    ("pask_ipvs.desired", "expand", "expand"),
    ("pask_ipvs.render.nft", "render_table", "nft render"),
    ("pask_ipvs.observe", "observe", "observe"),
    ("pask_ipvs.verify", "observe", "observe"),
    ("pask_ipvs.apply", "preflight", "preflight"),
    ("pask_ipvs.plan", "diff", "diff"),
    ("pask_ipvs.verify", "diff", "diff"),
    ("pask_ipvs.render.text", "plan_text", "plan text"),
    ("pask_ipvs.render.text", "op_json", "op json"),
    ("pask_ipvs.pipeline", "reconcile", "reconcile"),
    ("pask_ipvs.apply", "execute", "apply"),
    ("pask_ipvs.verify", "verify", "verify"),
    ("pask_ipvs.verify", "next_state", "next state"),
    ("pask_ipvs.state", "save_state", "state write"),
    ("pask_ipvs.fastpath.config_cache", "ConfigCache.save", "config cache write"),
    ("pask_ipvs.fastpath.config_cache", "code_digest", "code digest"),
    ("pask_ipvs.state", "PaskState.inputs_digest", "inputs digest"),
    ("pask_ipvs.fastpath.kernel_digest", "kernel_digest_now", "kernel fingerprint (no-op fast path)"),
    ("pask_ipvs.fastpath.kernel_digest", "kernel_digest", "fingerprint digest"),
    ("pask_ipvs.backend.ipvs", "IpvsNetlink.service_digests", "ipvs fingerprint"),
    ("pask_ipvs.backend.ipvs", "IpvsNetlink.observe", "ipvs observe"),
    ("pask_ipvs.backend.ipvs", "IpvsNetlink.observe_services", "ipvs observe (touched)"),
    ("pask_ipvs.backend.ipvs", "IpvsNetlink.apply", "ipvs write (encode + kernel)"),
    ("pask_ipvs.backend.ipvs", "IpvsNetlink.missing_schedulers", "ipvs schedulers"),
    ("pask_ipvs.backend.nft", "NftLib.observe", "nft observe"),
    ("pask_ipvs.backend.nft", "NftLib.check", "nft check"),
    ("pask_ipvs.backend.nft", "NftLib.replace", "nft replace"),
    ("pask_ipvs.backend.nft", "NftLib.delete", "nft delete"),
    ("pask_ipvs.backend.addr", "IPRouteAddr.observe", "addr observe"),
    ("pask_ipvs.backend.addr", "IPRouteAddr.add_link", "link add"),
    ("pask_ipvs.backend.addr", "IPRouteAddr.apply", "address batch"),
    ("pask_ipvs.backend.sysctl", "ProcSysctl.read", "sysctl read"),
    ("pask_ipvs.backend.sysctl", "ProcSysctl.write", "sysctl write"),
]


def _proc_age() -> float:
    """Seconds since this process was started (clock-tick resolution)."""
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        up = float(f.read().split()[0])
    return up - start_ticks / os.sysconf("SC_CLK_TCK")


def cmd_stages(args: argparse.Namespace) -> int:
    """In-process pask-apply with every pipeline stage timed (run as a child by `profile`)."""
    import importlib

    t_main = time.perf_counter()
    started = _proc_age()
    out: dict = {"interpreter start s": round(started, 3)}
    t = time.perf_counter()
    import pask_ipvs.cli as cli
    for m in ("pipeline", "apply", "observe", "verify", "backend.base", "fastpath.config_cache",
              "desired", "errors", "plan", "render.text", "render.nft", "state"):
        importlib.import_module(f"pask_ipvs.{m}")
    # the YAML loader, jsonschema and the validator load lazily: inside the config stage,
    # and only when the config cache cannot answer
    out["imports: pask core s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    for m in ("backend.real", "backend.ipvs", "backend.nft", "backend.addr", "backend.sysctl"):
        importlib.import_module(f"pask_ipvs.{m}")
    import nftables  # noqa: F401  (the nft backend imports it lazily; every run observes nft)
    out["imports: backends + nftables s"] = round(time.perf_counter() - t, 3)
    # pyroute2, where a backend still uses it, is imported lazily inside its stage

    timer = StageTimer()
    for mod, attr, label in STAGES:
        if mod not in sys.modules and mod in ("pask_ipvs.load", "pask_ipvs.validate",
                                              "pask_ipvs.yaml_fast"):
            _wrap_when_imported(timer, mod, attr, label)
            continue
        owner = importlib.import_module(mod)
        if "." in attr:
            cls, attr = attr.split(".")
            owner = getattr(owner, cls, None)
            if owner is None:
                continue
        timer.wrap(owner, attr, label)
    t = time.perf_counter()
    saved = sys.stdout
    sys.stdout = open(os.devnull, "w") if args.quiet_stdout else saved
    try:
        rc = cli.apply_main(args.pask_args)
    finally:
        if sys.stdout is not saved:
            sys.stdout.close()
        sys.stdout = saved
    out["apply_main s"] = round(time.perf_counter() - t, 3)
    out["total in process s"] = round(time.perf_counter() - t_main, 3)
    out["rc"] = rc
    out["stages"] = timer.rows()
    top = sum(r["s"] for r in out["stages"] if " > " not in r["path"])
    out["apply_main outside stages s"] = round(out["apply_main s"] - top, 3)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


def _wrap_when_imported(timer: "StageTimer", mod: str, attr: str, label: str) -> None:
    """Time ``mod.attr`` without importing ``mod`` now (its import is part of a stage)."""
    import importlib.abc
    import importlib.util

    pending = _PENDING.setdefault(mod, [])
    pending.append((attr, label))
    if len(pending) > 1:
        return

    class Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != mod:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            real_exec = spec.loader.exec_module

            def exec_module(module):
                real_exec(module)
                for a, lab in pending:
                    timer.wrap(module, a, lab)
            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Hook())


_PENDING: dict[str, list[tuple[str, str]]] = {}


def cmd_floor(args: argparse.Namespace) -> int:
    """What any fresh Python process pays for this config before pask's own work: the
    interpreter, pask's imports, and PyYAML (the project's YAML library) reading the
    file. The cold apply's target (<= 0.5 x keepalived) is compared with these."""
    result: dict = {"config": args.config, "env": _env(), "bytes": os.path.getsize(args.config)}
    py = python()

    def child(code: str) -> float:
        best = None
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([py, "-c", code], check=True, cwd=ROOT, env=_child_env())
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        return round(best, 3)

    subprocess.run([py, "-c", "import pask_ipvs.cli, yaml"], cwd=ROOT, env=_child_env())  # warm 9p
    rows = {"interpreter start (python -c pass)": child("pass"),
            "interpreter + import pask_ipvs.cli": child("import pask_ipvs.cli")}
    import gc
    import yaml

    from pask_ipvs import load, model, validate, yaml_fast, yaml_lines
    with open(args.config, encoding="utf-8") as f:
        text = f.read()

    def best(fn) -> float:
        out = None
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            out = dt if out is None else min(out, dt)
        return round(out, 3)

    gc.disable()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    rows["PyYAML + libyaml: yaml.compose (nodes only)"] = best(lambda: yaml.compose(text, Loader=loader))
    rows["PyYAML + libyaml: yaml.load (nodes -> dicts)"] = best(lambda: yaml.load(text, Loader=loader))
    rows["pask: exact reader (libyaml nodes -> dicts + line map)"] = best(
        lambda: load.read_exact(args.config, text))
    rows["pask: fast reader (scan + yaml-rs)"] = best(lambda: yaml_fast.read_fast(text))
    data, lines, _ = yaml_lines.parse_document(args.config, text)
    rows["pask: validate (schema + semantic checks)"] = best(lambda: validate.validate(data, lines, args.config))
    rows["pask: build_model"] = best(lambda: model.build_model(data, args.config))
    as_json = json.dumps(data)
    rows["json.loads of the same data (no YAML: what parsing could cost)"] = best(lambda: json.loads(as_json))
    result["rows"] = rows
    _emit(result, args.out)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """One fresh boot: per-stage wall times of a cold and a no-op apply (mode stages),
    or cProfile of a cold apply (mode cprofile)."""
    os.makedirs(args.out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="paskbench-prof-")
    result: dict = {"mode": args.mode, "env": _env(), "config": args.config, "pask": pask_source()}
    _require_fresh(result)
    result["warm_up"] = warm_up(args.config, tmp)
    py = python()
    files = ["--state-file", os.path.join(tmp, "state.json"),
             "--health-file", os.path.join(tmp, "health.json")]
    runs = [("cold", [args.config])]
    if args.mode == "stages":   # the cold profile's verify step already observes the full table
        runs.append(("noop", ["--format", "json", "--detailed-exitcode", args.config]))
        if args.changed:
            runs.append(("change", ["--format", "json", "--detailed-exitcode", args.changed]))
    for phase, pargs in runs:
        if args.mode == "stages":
            out = os.path.join(args.out_dir, f"stages-{phase}.json")
            cmd = [py, os.path.join(HERE, "scale.py"), "stages", "--quiet-stdout", "--out", out,
                   "--", *files, *pargs]
        else:
            out = os.path.join(args.out_dir, f"{phase}.prof")
            cmd = [py, "-m", "cProfile", "-o", out, "-m", "pask_ipvs.cli", "apply", *files, *pargs]
        r = timed(cmd, os.path.join(tmp, f"{phase}.out"))
        result[phase] = {"s": r["s"], "rc": r["rc"], "peak_rss_kb": r["peak_rss_kb"],
                         "stderr_tail": r["stderr_tail"][-300:], "file": out}
    _emit(result, os.path.join(args.out_dir, f"profile-{args.mode}.json"))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="cold apply, no-op apply, one weight changed")
    r.add_argument("config")
    r.add_argument("--meta", help="NAME.meta.json from `peers.py gen` (expected object count, the change)")
    r.add_argument("--expect", type=int, help="expected IPVS objects (without --meta)")
    r.add_argument("--changed", help="the config with one weight changed (NAME.changed.yaml)")
    r.add_argument("--cold-only", action="store_true")
    r.add_argument("--no-healthd", action="store_true",
                   help="skip the pask-healthd SIGHUP measurement of the same change")
    r.add_argument("--timeout", type=float, default=900, help="seconds to wait for pask-healthd")
    r.add_argument("--save-state", metavar="DIR",
                   help="after the no-op run, copy pask's state file and config cache to DIR")
    r.add_argument("--state-from", metavar="DIR",
                   help="start the cold run with DIR's state file and config cache (a reboot)")
    r.add_argument("--out", help="write the JSON result here too")
    r.set_defaults(fn=cmd_run)
    p = sub.add_parser("profile", help="where pask-apply's time goes (cold then no-op)")
    p.add_argument("config")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--mode", choices=("stages", "cprofile"), default="stages")
    p.add_argument("--changed", help="also profile an apply of this config (one weight changed)")
    p.set_defaults(fn=cmd_profile)
    n = sub.add_parser("noop", help="adopt the table another tool left, then time no-op applies "
                       "(side by side with that tool's cold start, in its boot)")
    n.add_argument("config")
    n.add_argument("--runs", type=int, default=NOOP_RUNS)
    n.add_argument("--out", help="write the JSON result here too")
    n.set_defaults(fn=cmd_noop)
    f = sub.add_parser("floor", help="what a fresh process pays before pask's own work "
                       "(interpreter, imports, PyYAML reading the file)")
    f.add_argument("config")
    f.add_argument("--out", help="write the JSON result here too")
    f.set_defaults(fn=cmd_floor)
    s = sub.add_parser("stages", help="(internal) pask-apply in process with stage timers")
    s.add_argument("--out", required=True)
    s.add_argument("--quiet-stdout", action="store_true")
    s.add_argument("pask_args", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_stages)
    args = ap.parse_args(argv)
    if getattr(args, "pask_args", None) and args.pask_args[0] == "--":
        args.pask_args = args.pask_args[1:]
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
