#!/usr/bin/env python3
"""The two YAML readers side by side on one config, in one process: CPU seconds, best of 5.

    python bench/read_bench.py [examples/scale-1024.yaml]

Rows: the fast reader's scan alone, the fast reader (scan + yaml-rs), the exact
reader (PyYAML with libyaml, with lines), and load_config both
ways (the exact way is what a config with a problem, or one only PyYAML may
read, costs). The ratio column is each row against the exact reader.
"""

from __future__ import annotations

import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pask_ipvs import load, yaml_fast                    # noqa: E402
from pask_ipvs.load import load_config, read_exact       # noqa: E402


def cpu(fn, repeat=5) -> float:
    best = None
    for _ in range(repeat):
        gc.collect()
        start = time.process_time()
        with load.gc_paused():              # as load_config reads
            fn()
        took = time.process_time() - start
        best = took if best is None else min(best, took)
    return best or 0.0


def main(argv: list[str]) -> int:
    path = argv[0] if argv else "examples/scale-1024.yaml"
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert yaml_fast.read_fast(text) is not None, f"{path}: only the exact reader may read it"
    rows = {
        "fast reader: scan only": lambda: yaml_fast.exact_reader_needed(text),
        "fast reader: scan + yaml-rs": lambda: yaml_fast.read_fast(text),
        "exact reader: PyYAML + lines": lambda: read_exact(path, text),
    }
    times = {name: cpu(fn) for name, fn in rows.items()}
    times["load_config, fast reader"] = cpu(lambda: load_config(path, text))
    real = yaml_fast.read_fast
    yaml_fast.read_fast = lambda _text: None
    try:
        times["load_config, exact reader"] = cpu(lambda: load_config(path, text))
    finally:
        yaml_fast.read_fast = real
    exact = times["exact reader: PyYAML + lines"]
    print(f"{path}: {len(text) / 1e6:.2f} MB, CPU seconds, best of 5")
    for name, took in times.items():
        print(f"  {name:48} {took:7.3f} s   {took / exact:5.2f} x exact reader")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
