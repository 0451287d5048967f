#!/usr/bin/env python3
"""CPU cost of each pure pipeline stage at scale (no kernel): load, expand, plan.

    python bench/plan_bench.py [examples/scale-1024.yaml ...]

Plans twice: against an empty kernel (cold) and against a kernel that already
matches (the no-op run), using the fake backends. Reports process CPU time per
stage, best of 3, so that a busy machine skews it less.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pask_ipvs.backend.fake import fake_backends        # noqa: E402
from pask_ipvs.desired import expand                    # noqa: E402
from pask_ipvs.fwmarks import fwmarks_for               # noqa: E402
from pask_ipvs.load import load_config                  # noqa: E402
from pask_ipvs.observe import observe                   # noqa: E402
from pask_ipvs.pipeline import reconcile                # noqa: E402
from pask_ipvs.plan import diff                         # noqa: E402
from pask_ipvs.state import PaskState                   # noqa: E402


def cpu(fn, repeat=3):
    best, value = None, None
    for _ in range(repeat):
        t = time.process_time()
        value = fn()
        dt = time.process_time() - t
        best = dt if best is None else min(best, dt)
    return best, value


def bench(path: str) -> list[tuple[str, float]]:
    rows = []
    t_load, config = cpu(lambda: load_config(path))
    rows.append(("load + validate", t_load))
    marks = fwmarks_for(config, {})
    t_expand, desired = cpu(lambda: expand(config, marks))
    rows.append(("expand", t_expand))
    b = fake_backends()
    empty = observe(desired, b)
    t_cold, plan = cpu(lambda: diff(desired, empty, PaskState()))
    rows.append((f"plan vs empty kernel ({len(plan)} ops)", t_cold))
    out = reconcile(desired, empty, PaskState(), marks, b, plan=plan)
    full = observe(desired, b)
    t_noop, noop = cpu(lambda: diff(desired, full, out.state))
    rows.append((f"plan vs matching kernel ({len(noop)} ops)", t_noop))
    rows.append(("load + expand + plan (cold)", t_load + t_expand + t_cold))
    return rows


def main(argv: list[str]) -> int:
    paths = argv or ["examples/scale-1024.yaml"]
    for path in paths:
        print(f"\n{path}")
        print("| stage | CPU s |\n|---|---|")
        for name, t in bench(path):
            print(f"| {name} | {t:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
