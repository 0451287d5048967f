#!/usr/bin/env python3
"""Peak RSS (ru_maxrss) of one cold pask-apply at 1024 x 32, source trees side by side.

    python bench/rss_bench.py [--config examples/scale-1024.yaml] [--runs 3] TREE [TREE ...]

Each run is a fresh child process that runs pipeline.apply_config against an empty
kernel with a fresh state file, and reports its peak RSS. Two kernels:

* fakes: every backend in memory (backend/fake.py); the fake IPVS table is the child's
  own memory (a real kernel's is not), its list of the ops it ran is not kept;
* IPVS code: IPVS through IpvsNetlink's own reads and writes (encoding, batches, acks,
  dumps scanned and decoded) on bench/edit_bench.py's stand-in socket, the table kept
  by a fake as well (so this one counts both).

The least of the runs is reported (the interpreter and imports are the same each time).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def child(tree: str, config: str, kernel: str) -> dict:
    sys.path.insert(0, tree)
    sys.path.insert(1, HERE)
    from pask_ipvs.backend.fake import fake_backends
    from pask_ipvs.pipeline import ApplyRequest, apply_config

    class Quiet:
        def info(self, msg): pass
        def progress(self, msg): pass
        def error(self, msg): print(msg, file=sys.stderr)

    b = fake_backends()
    fake = b.ipvs
    fake_apply = fake.apply

    def apply(ops):          # the fake keeps every op it ran (for tests); a kernel does not
        errors = fake_apply(ops)
        fake.applied.clear()
        return errors
    fake.apply = apply
    if kernel == "ipvs-code":
        from edit_bench import real_ipvs_on
        b.ipvs, _ = real_ipvs_on(fake, mirror_writes=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as d:
        request = ApplyRequest(config=config, state_file=os.path.join(d, "state.json"),
                               health_file=os.path.join(d, "health.json"), quiet=True)
        t = time.process_time()
        report = apply_config(request, lambda: b, Quiet())
        cpu = time.process_time() - t
        assert not report["errors"] and report["verified"], report["errors"]
    return {"before": before / 1024, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cpu": cpu}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="examples/scale-1024.yaml")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("trees", nargs="*")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], os.path.abspath(args.config), args.child[1])))
        return 0
    trees = [os.path.abspath(t) for t in args.trees] or [os.path.dirname(HERE)]
    caches = tempfile.TemporaryDirectory()
    rows: dict[str, list[float | None]] = {}
    for kernel in ("fakes", "ipvs-code"):
        for run in range(args.runs + 1):
            for i, tree in enumerate(trees):
                env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
                env["PYTHONPYCACHEPREFIX"] = os.path.join(caches.name, str(i))
                r = subprocess.run([sys.executable, os.path.abspath(__file__), "--config", args.config,
                                    "--child", tree, kernel], capture_output=True, text=True, env=env)
                if r.returncode:
                    sys.exit(f"{tree}: {r.stderr}")
                if run == 0:
                    continue
                got = json.loads(r.stdout.strip().splitlines()[-1])
                for label, key in ((f"{kernel}: before the run (interpreter + imports)", "before"),
                                   (f"{kernel}: peak RSS of the cold apply", "peak"),
                                   (f"{kernel}: CPU s of the cold apply", "cpu")):
                    row = rows.setdefault(label, [None] * len(trees))
                    row[i] = got[key] if row[i] is None else min(row[i], got[key])
    print("| cold apply, 1024 x 32 (native, MB; least of %d) | %s |" % (args.runs, " | ".join(trees)))
    print("|---|" + "---|" * len(trees))
    for label, row in rows.items():
        fmt = "{:.3f}" if "CPU" in label else "{:.1f}"
        print(f"| {label} | " + " | ".join(fmt.format(v) for v in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
