"""A pask-healthd daemon on fake backends with its metrics registry, for the tests
that read what a scrape shows (metrics, dashboard)."""

from __future__ import annotations

import io
import random

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pask_ipvs.backend.fake import fake_backends
from pask_ipvs.desired import expand
from pask_ipvs.health.daemon import HealthDaemon
from pask_ipvs.health.events import EventLog
from pask_ipvs.health.metrics import DaemonMetrics, KernelCollector, registry_for
from pask_ipvs.health.probes import Result


class ScriptedProbe:
    """Every probe passes unless ``ok[address]`` says otherwise."""

    def __init__(self):
        self.ok: dict[str, bool] = {}

    async def __call__(self, health, target) -> Result:
        return Result(self.ok.get(target.addr, True), "scripted", 0.003)


def metrics_daemon(cfg, fwmarks=None, *, per_server=True, state_file=None, seed=True):
    """(daemon, backends, probe, registry); ``seed``: the kernel holds the config already."""
    backends = fake_backends()
    if seed:
        desired = expand(cfg, fwmarks or {}, {})
        backends.ipvs.seed(desired.services.values(), desired.dests.values())
    probe = ScriptedProbe()
    d = HealthDaemon(cfg, backends, fwmarks=fwmarks, probe=probe, log=EventLog(stream=io.StringIO()),
                     rng=random.Random(1))
    collector = KernelCollector(lambda: (d.config, d.fwmarks, d.machine.servers.copy()),
                                backends.ipvs, state_file, per_server=per_server)
    registry = registry_for(collector)
    d.metrics = DaemonMetrics(registry, per_server=per_server)
    return d, backends, probe, registry


def scrape(registry) -> dict[str, list]:
    """name -> [(labels, value)] of every sample (histogram and counter suffixes kept)."""
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out
