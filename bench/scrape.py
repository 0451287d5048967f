#!/usr/bin/env python3
"""What one Prometheus scrape of pask-healthd costs at scale (issue 17), in ONE boot of the VM.

    integration/vm-run 'cd REPO && .venv/bin/python bench/scrape.py examples/scale-1024.yaml'

Applies CONFIG (pask-apply, cold), then for ``per_server: true`` and ``false`` starts
``pask-healthd`` on a copy of CONFIG with ``metrics: {listen: 127.0.0.1:PORT}`` and times
SCRAPES HTTP GETs of /metrics, back to back, from the request to its last byte, plain and
with ``Accept-Encoding: gzip`` as Prometheus sends it, next to
one bare IPVS dump with and without stats. The first scrape waits for the first snapshot;
later ones are answered within the snapshot budget (health/metrics.py, Snapshots) with the
freshest finished snapshot, whose own IPVS dump time each body reports
(pask_ipvs_read_duration_seconds). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".venv", "bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str, gzipped: bool = False) -> tuple[float, int, int, float | None]:
    """(seconds to the last byte, bytes sent, lines, the snapshot's IPVS dump seconds)."""
    headers = {"Accept-Encoding": "gzip"} if gzipped else {}
    t = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=600) as response:
        body = response.read()
        encoding = response.headers.get("Content-Encoding")
    took = time.perf_counter() - t
    sent = len(body)
    if gzipped:
        assert encoding == "gzip", encoding
        body = gzip.decompress(body)
    dump = None
    for line in body.splitlines():
        if line.startswith(b"pask_ipvs_read_duration_seconds "):
            dump = float(line.split()[1])
    return took, sent, body.count(b"\n"), dump


def wait_for(url: str, proc: subprocess.Popen, deadline: float) -> None:
    while True:
        try:
            scrape(url)
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"pask-healthd did not serve {url}: {proc.stderr.read()}")
            time.sleep(0.2)


def ipvs_dump_seconds() -> float:
    from pask_ipvs.backend.real import real_backends

    ipvs = real_backends().ipvs
    ipvs.observe(stats=True)                       # warm: sockets, code paths
    t = time.perf_counter()
    ipvs.observe(stats=True)
    return time.perf_counter() - t


def ipvs_plain_dump_seconds() -> float:
    from pask_ipvs.backend.real import real_backends

    ipvs = real_backends().ipvs
    t = time.perf_counter()
    ipvs.observe()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--scrapes", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="pask-scrape-")
    state, health = os.path.join(tmp, "state.json"), os.path.join(tmp, "health.json")
    subprocess.run([f"{BIN}/pask-apply", "--quiet", "--state-file", state, "--health-file", health,
                    args.config], check=True)
    text = open(args.config, encoding="utf-8").read()
    out: dict = {"config": args.config, "ipvs_dump_with_stats_s": ipvs_dump_seconds(),
                 "ipvs_dump_without_stats_s": ipvs_plain_dump_seconds()}
    for per_server in (False, True):
        port = free_port()
        path = os.path.join(tmp, f"metrics-{per_server}.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace("\nservices:\n", f"\nmetrics: {{listen: \"127.0.0.1:{port}\", "
                                 f"per_server: {str(per_server).lower()}}}\nservices:\n", 1))
        proc = subprocess.Popen([f"{BIN}/pask-healthd", "--state-file", state, "--health-file",
                                 health, path], stderr=subprocess.PIPE, text=True)
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            wait_for(url, proc, time.monotonic() + 600)     # the first snapshot, waited for
            runs = {gz: [scrape(url, gz) for _ in range(args.scrapes)] for gz in (False, True)}
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        for gz, done in runs.items():
            seconds = [r[0] for r in done]
            out[f"per_server_{str(per_server).lower()}" + ("_gzip" if gz else "")] = {
                "scrape_s": seconds, "median_s": statistics.median(seconds), "max_s": max(seconds),
                "snapshot_ipvs_dump_s": [r[3] for r in done],
                "bytes": done[-1][1], "lines": done[-1][2]}
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
