#!/usr/bin/env python3
"""Native CPU per stage of one cold pask-apply (fake backends), two source trees side by side.

    python bench/cold_bench.py [--config examples/scale-1024.yaml] [--runs 5] TREE [TREE ...]

Each run is a fresh child process (imports from bytecode, lru caches and the
interpreter as a real run has them) that runs pipeline.apply_config against an empty in-memory kernel
(backend/fake.py) with a fresh state file, every stage wrapped in a process-CPU
timer. Runs of the trees alternate (a noisy machine skews them alike); each stage's
number is the best of the runs. Everything pure runs ~10x faster here than in the
test VM: a proxy for the VM's stage profile (docs/performance.md), not the VM's time.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scale import StageTimer  # noqa: E402

# (module, attribute, label); "Class.method" wraps a method.
STAGES = [
    ("pask_ipvs.fastpath.config_cache", "ConfigCache.load", "config"),
    ("pask_ipvs.load", "load_config", "load_config"),
    ("pask_ipvs.yaml_fast", "read_fast", "yaml (fast reader)"),
    ("pask_ipvs.validate", "passes", "validate: schema (jsonschema-rs)"),
    ("pask_ipvs.validate", "semantic_issues", "validate: semantic"),
    ("pask_ipvs.validate", "validate", "validate"),
    ("pask_ipvs.model", "build_model", "build model"),
    ("pask_ipvs.fwmarks", "fwmarks_for", "fwmarks"),
    ("pask_ipvs.desired", "expand", "expand"),
    ("pask_ipvs.render.nft", "render_table", "nft render"),
    ("pask_ipvs.observe", "observe", "observe"),
    ("pask_ipvs.apply", "preflight", "preflight"),
    ("pask_ipvs.plan", "diff", "diff (the plan's, and verify's again)"),
    ("pask_ipvs.render.text", "plan_text", "plan text"),
    ("pask_ipvs.apply", "execute", "apply (fake writes)"),
    ("pask_ipvs.verify", "verify", "verify"),
    ("pask_ipvs.verify", "next_state", "next state"),
    ("pask_ipvs.fastpath.noop", "record_verified", "fingerprint recorded"),
    ("pask_ipvs.state", "save_state", "state write"),
    ("pask_ipvs.fastpath.config_cache", "ConfigCache.save", "config cache write"),
]


def child(tree: str, config: str) -> dict:
    t0 = time.process_time()
    sys.path.insert(0, tree)
    from pask_ipvs.backend.fake import fake_backends
    from pask_ipvs.pipeline import ApplyRequest, apply_config
    imports = time.process_time() - t0
    timer = StageTimer(clock=time.process_time, by_path=False)
    for mod, attr, label in STAGES:
        try:
            owner = importlib.import_module(mod)
        except ImportError:
            continue
        if "." in attr:
            cls, attr = attr.split(".")
            owner = getattr(owner, cls, None)
            if owner is None:
                continue
        timer.wrap(owner, attr, label)
        # a name imported at another module's top: wrap it there too
        for m in list(sys.modules.values()):
            if getattr(m, "__name__", "").startswith("pask_ipvs") and m is not owner \
                    and "." not in label and getattr(m, attr, None) is not None \
                    and getattr(getattr(m, attr), "__wrapped__", None) is None \
                    and getattr(m, attr) is getattr(owner, attr).__wrapped__:
                timer.wrap(m, attr, label)

    class Quiet:
        def info(self, msg): pass
        def progress(self, msg): pass
        def error(self, msg): print(msg, file=sys.stderr)

    with tempfile.TemporaryDirectory() as d:
        request = ApplyRequest(config=config, state_file=os.path.join(d, "state.json"),
                               health_file=os.path.join(d, "health.json"), quiet=True)
        b = fake_backends()
        t = time.process_time()
        report = apply_config(request, lambda: b, Quiet())
        total = time.process_time() - t
        assert not report["errors"] and report["verified"], report["errors"]
        out = {"imports (pask + fakes)": imports}
        out.update(timer.totals())
        out["apply_config total"] = total
        t = time.process_time()          # the same again: the no-op fast path (fake kernel)
        report = apply_config(request, lambda: b, Quiet())
        out["no-op apply_config (fake kernel's digests)"] = time.process_time() - t
        assert not report["errors"] and not report["changed"], report
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="examples/scale-1024.yaml")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("trees", nargs="*")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, os.path.abspath(args.config))))
        return 0
    trees = args.trees or [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    best: list[dict[str, float]] = [{} for _ in trees]
    # Bytecode as a deployed pask has it (the VM keeps its .pyc files): each tree's own
    # cache, outside the tree, written by an uncounted first run.
    caches = tempfile.TemporaryDirectory()
    envs = []
    for i, _ in enumerate(trees):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = os.path.join(caches.name, str(i))
        envs.append(env)
    for run in range(args.runs + 1):
        for i, tree in enumerate(trees):
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "--config", args.config,
                                "--child", os.path.abspath(tree)],
                               capture_output=True, text=True, check=True, env=envs[i])
            if run == 0:
                continue
            keep_best(best[i], r.stdout)
    caches.cleanup()
    print_table(f"stage (native CPU s, best of {args.runs})", trees, best,
                ["imports (pask + fakes)"] + [s[2] for s in STAGES])
    return 0


def keep_best(best: dict[str, float], stdout: str) -> None:
    """Fold one child's stage times (its last line, JSON) into the best of the runs so far."""
    for k, v in json.loads(stdout.strip().splitlines()[-1]).items():
        best[k] = min(v, best.get(k, v))


def print_table(title: str, trees: list[str], best: list[dict[str, float]], first: list[str]) -> None:
    """One row per stage (``first`` in that order, then the others), one column per tree."""
    labels = list(dict.fromkeys(first + [k for b in best for k in b]))
    print(f"| {title} | " + " | ".join(trees) + " |")
    print("|---|" + "---|" * len(trees))
    for k in labels:
        if any(k in b for b in best):
            print(f"| {k} | " + " | ".join(f"{b[k]:.3f}" if k in b else "" for b in best) + " |")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
