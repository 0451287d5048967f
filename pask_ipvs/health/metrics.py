"""Prometheus metrics of pask-healthd (``metrics.listen``), through prometheus-client.

Two sources, two shapes:

* what the daemon sees happen (probe durations, health transitions) is counted as
  it happens, in prometheus-client's own Histogram and Counter (``DaemonMetrics``);
* what the kernel holds (weights, connections, IPVS's packet and byte counters) is
  read when Prometheus asks: ``KernelCollector`` makes one IPVS dump with stats per
  scrape, through its own backend (the daemon's netlink socket stays the daemon's),
  and reports every service of the running config by its name.

Every series carries the service's name, so fwmark services (several configs can
share a VIP and port, told apart by their filters) never collide, the trap of
node_exporter's IPVS collector (#1296). Labels follow node_exporter's meanings
under pask's names: ``vip``/``port``/``protocol`` are the service's as configured,
``real_server``/``real_port`` the destination's. ``per_server: false`` keeps only
per-service series: at 1024 x 32 each per-server metric is 33k series.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..desired import dest_port, service_key
from ..health_file import health_key
from ..objects import DestKey, DestStats, Stats
from ..state import last_applied

if TYPE_CHECKING:
    from ..model import Config
    from ..objects import IpvsObserved
    from .checks import Check
    from .machine import ServerHealth, Transition
    from .probes import Result

SERVICE_LABELS = ("service", "vip", "port", "protocol")
SERVER_LABELS = SERVICE_LABELS + ("real_server", "real_port")
# probe durations: from a loopback connect (sub-ms) to the longest sensible timeout
PROBE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# (name, help, what of a Stats) for the counters; "direction" is in/out
_TRAFFIC = (("packets", "Packets IPVS forwarded", ("inpkts", "outpkts")),
            ("bytes", "Bytes IPVS forwarded", ("inbytes", "outbytes")))


class DaemonMetrics:
    """Events of the daemon: one probe's duration, one health transition."""

    def __init__(self, registry: CollectorRegistry, per_server: bool = True):
        self.per_server = per_server
        self.durations = Histogram(
            "pask_health_check_duration_seconds", "Duration of health probes, by verdict",
            ("service", "result"), registry=registry, buckets=PROBE_BUCKETS)
        self.transitions = Counter(
            "pask_health_transitions", "Health transitions of real servers (to: up or down)",
            ("service", "real_server", "real_port", "to") if per_server else ("service", "to"),
            registry=registry)

    def probe(self, check: "Check", result: "Result") -> None:
        self.durations.labels(check.service, "pass" if result.ok else "fail").observe(result.elapsed)

    def transition(self, check: "Check", transition: "Transition") -> None:
        if self.per_server:
            labels = (check.service, check.target.addr, str(check.port), transition.new_name)
        else:
            labels = (check.service, transition.new_name)
        self.transitions.labels(*labels).inc()


class KernelCollector:
    """The kernel's view of the running config, read at each scrape.

    ``snapshot`` gives the daemon's config, fwmarks and health (read from the scrape
    thread: the daemon replaces these objects whole, never edits them in place, and
    the health map is copied in one step)."""

    def __init__(self, snapshot: Callable[[], tuple["Config", Mapping[str, int],
                                                    Mapping[str, "ServerHealth"]]],
                 ipvs, state_file: str | None, per_server: bool = True,
                 on_error: Callable[[Exception], None] | None = None):
        self.snapshot = snapshot
        self.ipvs = ipvs
        self.state_file = state_file
        self.per_server = per_server
        self.on_error = on_error
        self.lock = threading.Lock()        # scrapes run in threads; one netlink socket

    def describe(self) -> Iterable[Metric]:
        return ()           # no scrape at registration: the kernel is read only when asked

    def collect(self) -> Iterator[Metric]:
        config, fwmarks, health = self.snapshot()
        started = time.perf_counter()
        try:
            with self.lock:
                observed = self.ipvs.observe(stats=True)
        except Exception as e:                      # report it, and what needs no kernel
            if self.on_error is not None:
                self.on_error(e)
            observed = None
        ok = GaugeMetricFamily("pask_ipvs_read_success",
                               "1 when this scrape could read IPVS, else 0 (see the daemon's log)")
        ok.add_metric((), 1 if observed is not None else 0)
        yield ok
        took = GaugeMetricFamily("pask_ipvs_read_duration_seconds",
                                 "How long this scrape's IPVS dump (with stats) took")
        took.add_metric((), time.perf_counter() - started)
        yield took
        yield from self._applied()
        yield from self._ha(config)
        if observed is not None:
            yield from self._kernel(config, fwmarks, health, observed)

    def _applied(self) -> Iterator[Metric]:
        if not self.state_file:
            return
        try:
            applied_at = last_applied(self.state_file)
        except OSError:
            return
        if applied_at is not None:
            m = GaugeMetricFamily("pask_apply_last_success_timestamp_seconds",
                                  "When pask-apply last left the kernel verified equal to the config")
            m.add_metric((), applied_at)
            yield m

    def _ha(self, config: "Config") -> Iterator[Metric]:
        """pask_ha_state{state}: 1 for the role keepalived last reported on this node."""
        if config.ha is None or not self.state_file:
            return
        from ..ha import ROLES, read_role
        from ..render.ha import EnginePaths

        role = read_role(EnginePaths.for_state_file(self.state_file))
        m = GaugeMetricFamily("pask_ha_state", "1 for this node's VRRP role (keepalived's last "
                              "report), 0 for the others", labels=("state",))
        for name in ROLES:
            m.add_metric((name,), 1 if role is not None and role[0] == name else 0)
        yield m

    def _kernel(self, config: "Config", fwmarks: Mapping[str, int],
                health: Mapping[str, "ServerHealth"], observed: "IpvsObserved") -> Iterator[Metric]:
        svc_fam = _Families("pask_service", SERVICE_LABELS, "of the service's real servers")
        rs_fam = _Families("pask_real_server", SERVER_LABELS, "of the real server") \
            if self.per_server else None
        present = GaugeMetricFamily("pask_service_in_kernel",
                                    "1 when the service is in IPVS, 0 when pask-apply has not created it",
                                    labels=SERVICE_LABELS)
        servers_up = GaugeMetricFamily("pask_service_real_servers_up",
                                       "Real servers of the service that pass their health check",
                                       labels=SERVICE_LABELS)
        up = weight = None
        if rs_fam is not None:
            up = GaugeMetricFamily("pask_real_server_up",
                                   "1 when the real server passes its health check (or has none), else 0",
                                   labels=SERVER_LABELS)
            weight = GaugeMetricFamily("pask_real_server_weight",
                                       "The real server's weight in IPVS (0: drained or failed; "
                                       "absent: not in IPVS)", labels=SERVER_LABELS)
        for svc in config.services:
            labels = (svc.name, svc.vip, str(svc.port), svc.protocol.value)
            try:
                key = service_key(svc, fwmarks)
            except KeyError:                # a filtered service pask-apply has not applied yet
                present.add_metric(labels, 0)
                continue
            present.add_metric(labels, 1 if key in observed.services else 0)
            n_up = 0
            totals = _Sum()
            for rs in svc.real_servers:
                state = health.get(health_key(svc.name, rs.address, rs.port))
                is_up = state is None or state.up
                n_up += is_up
                dkey = DestKey(key, rs.address, dest_port(svc, rs))
                dest = observed.dests.get(dkey)
                stats = observed.dest_stats.get(dkey)
                if stats is not None:
                    totals.add(stats)
                if rs_fam is None:
                    continue
                rs_labels = labels + (rs.address, str(rs.port))
                up.add_metric(rs_labels, 1 if is_up else 0)      # type: ignore[union-attr]
                if dest is not None:
                    weight.add_metric(rs_labels, dest.weight)    # type: ignore[union-attr]
                if stats is not None:
                    rs_fam.add(rs_labels, stats.active_conns, stats.inact_conns, stats.stats)
            servers_up.add_metric(labels, n_up)
            svc_stats = observed.service_stats.get(key)
            if svc_stats is not None:
                svc_fam.add(labels, totals.active, totals.inactive, svc_stats)
        yield present
        yield servers_up
        yield from svc_fam.families()
        if rs_fam is not None:
            yield up                                             # type: ignore[misc]
            yield weight                                         # type: ignore[misc]
            yield from rs_fam.families()


class _Sum:
    """A service's connection gauges: the sum over its destinations (IPVS keeps none)."""

    def __init__(self) -> None:
        self.active = self.inactive = 0

    def add(self, stats: DestStats) -> None:
        self.active += stats.active_conns
        self.inactive += stats.inact_conns


class _Families:
    """The connection gauges and traffic counters of services or of real servers."""

    def __init__(self, prefix: str, labels: tuple[str, ...], whose: str):
        self.active = GaugeMetricFamily(f"{prefix}_connections_active",
                                        f"Active (established) connections {whose} in IPVS",
                                        labels=labels)
        self.inactive = GaugeMetricFamily(f"{prefix}_connections_inactive",
                                          f"Inactive connections {whose} in IPVS", labels=labels)
        self.conns = CounterMetricFamily(f"{prefix}_connections",
                                         f"Connections IPVS scheduled {whose}", labels=labels)
        self.traffic = [(CounterMetricFamily(f"{prefix}_{name}", f"{text} {whose}",
                                             labels=labels + ("direction",)), fields)
                        for name, text, fields in _TRAFFIC]

    def add(self, labels: tuple[str, ...], active: int, inactive: int, stats: Stats) -> None:
        self.active.add_metric(labels, active)
        self.inactive.add_metric(labels, inactive)
        self.conns.add_metric(labels, stats.conns)
        for family, (incoming, outgoing) in self.traffic:
            family.add_metric(labels + ("in",), getattr(stats, incoming))
            family.add_metric(labels + ("out",), getattr(stats, outgoing))

    def families(self) -> Iterator[Metric]:
        yield self.active
        yield self.inactive
        yield self.conns
        for family, _ in self.traffic:
            yield family


class Snapshots:
    """The exposition text, made by prometheus-client from ``registry``, one at a time.

    A scrape starts a new snapshot (unless one is being made) and waits up to
    ``budget`` seconds for it. A snapshot that takes longer (a table of 33k real
    servers under a slow CPU: seconds of dump and formatting) is not waited for: that
    scrape gets the last finished one, the next scrape the new one. So a scrape
    answers in about ``budget`` seconds however big the table, each scrape costs at
    most one IPVS dump, and small tables (the common case) are always served fresh.

    Each snapshot is also gzipped once, beside it, for the scrapers that accept it
    (Prometheus does): 1024 x 32 real servers is 45 MB of text, about 20x less
    to send, and compressing it here costs the scrape nothing."""

    def __init__(self, registry: CollectorRegistry, budget: float = 0.5,
                 on_error: Callable[[Exception], None] | None = None):
        self.registry = registry
        self.budget = budget
        self.on_error = on_error
        self.bodies: tuple[bytes, bytes] | None = None     # (text, gzip of it), of one snapshot
        self.generation = 0                 # snapshots finished (or failed)
        self.running = False
        self.cond = threading.Condition()

    def _make(self) -> None:
        import gzip

        from prometheus_client import generate_latest

        bodies = None
        try:
            body = generate_latest(self.registry)
            bodies = (body, gzip.compress(body, compresslevel=1, mtime=0))
        except Exception as e:              # a collector bug must not kill the server thread
            if self.on_error is not None:
                self.on_error(e)
        with self.cond:
            if bodies is not None:
                self.bodies = bodies
            self.running = False
            self.generation += 1
            self.cond.notify_all()

    def get(self, gzipped: bool = False) -> bytes | None:
        """The freshest text this scrape can have within the budget (gzipped, or not);
        None if none could be made."""
        with self.cond:
            if not self.running:
                self.running = True
                threading.Thread(target=self._make, name="pask-metrics", daemon=True).start()
            seen = self.generation
            deadline = time.monotonic() + self.budget
            while self.generation == seen:
                left = deadline - time.monotonic()
                if left <= 0 and self.bodies is not None:
                    break
                self.cond.wait(left if left > 0 else None)     # the first one: wait for it
            return None if self.bodies is None else self.bodies[1 if gzipped else 0]


def registry_for(collector: KernelCollector | None = None) -> CollectorRegistry:
    """A registry of pask's own (no process or platform collectors: pask's names only)."""
    registry = CollectorRegistry(auto_describe=False)
    if collector is not None:
        registry.register(collector)
    return registry


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header takes gzip (``gzip;q=0`` refuses it)."""
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip"):
            for param in params.split(";"):
                name, _, value = param.strip().partition("=")
                if name.strip().lower() == "q":
                    try:
                        return float(value) > 0
                    except ValueError:
                        return False
            return True
    return False


def serve(snapshots: Snapshots, address: str, port: int):
    """Serve /metrics from ``snapshots`` in threads of this process (prometheus-client's
    threading WSGI server); the server, bound. OSError when the address cannot be bound."""
    import socket
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.exposition import CONTENT_TYPE_LATEST, ThreadingWSGIServer

    def app(environ, start_response):
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"pask-healthd serves /metrics\n"]
        gzipped = accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", ""))
        body = snapshots.get(gzipped)
        if body is None:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"no metrics could be made: see pask-healthd's log\n"]
        headers = [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body))),
                   ("Vary", "Accept-Encoding")]
        if gzipped:
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body]

    class Quiet(WSGIRequestHandler):
        def log_message(self, format, *args):     # the daemon's log is JSON events only
            pass

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    server_class = type("Server", (ThreadingWSGIServer,), {"address_family": family})
    httpd = make_server(address, port, app, server_class, handler_class=Quiet)
    threading.Thread(target=httpd.serve_forever, name="pask-metrics-http", daemon=True).start()
    return httpd
