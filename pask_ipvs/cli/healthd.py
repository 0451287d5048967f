"""pask-healthd: parse the flags, load the config, run the health daemon (health/daemon.py)."""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
from typing import TYPE_CHECKING, Callable

from ..health.events import EventLog
from ..health_file import DEFAULT_HEALTH_FILE
from ..state import DEFAULT_STATE_FILE
from .common import EXIT_ERROR, EXIT_OK, ArgParser

if TYPE_CHECKING:
    from ..backend.base import Backends
    from ..fastpath.config_cache import ConfigCache
    from ..health.daemon import HealthDaemon
    from ..model import Config


def load_previous_health(path: str | None, log: EventLog) -> dict[str, dict]:
    """The health file's servers; a missing or unreadable file means nothing is known."""
    from ..health_file import health_servers, read_health_bytes

    try:
        return health_servers(read_health_bytes(path), path or "")
    except (OSError, ValueError) as e:
        # Health can be measured again; refusing to start would leave servers unchecked.
        log("health_file_ignored", level="warning", file=path, error=str(e))
        return {}


def load_inputs(config_path: str, state_file: str,
                cache: "ConfigCache | None" = None) -> tuple[Config, dict[str, int]]:
    """The config (ConfigError on problems) and the fwmarks pask-apply allocated.

    With ``cache`` (pask-apply's config cache, only read here, never written), the
    first load unpickles what pask-apply validated and a reload parses only the
    services that were edited since the last load."""
    from ..load import load_config
    from ..state import load_state

    config = cache.load(config_path) if cache is not None else load_config(config_path)
    return config, dict(load_state(state_file).fwmarks)


def serve_metrics(daemon: "HealthDaemon", backends: "Callable[[], Backends]",
                  state_file: str, log: EventLog) -> str:
    """Start /metrics for ``daemon`` (config.metrics); its address as bound. OSError when
    the address cannot be bound: the daemon must not run without the metrics asked for."""
    from ..health.metrics import DaemonMetrics, KernelCollector, Snapshots, registry_for, serve

    settings = daemon.config.metrics
    assert settings is not None
    collector = KernelCollector(
        lambda: (daemon.config, daemon.fwmarks, daemon.machine.servers.copy()),
        backends().ipvs, state_file, per_server=settings.per_server,
        on_error=lambda e: log("metrics_ipvs_failed", level="error", error=str(e)))
    registry = registry_for(collector)
    daemon.metrics = DaemonMetrics(registry, per_server=settings.per_server)
    snapshots = Snapshots(registry, on_error=lambda e: log("metrics_failed", level="error",
                                                          error=repr(e)))
    httpd = serve(snapshots, settings.address, settings.port)
    host, port = httpd.server_address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parser() -> argparse.ArgumentParser:
    p = ArgParser(
        prog="pask-healthd",
        description="Health checks for pask's real servers: failed servers get weight 0 "
                    "(or are removed) within interval x fall seconds and come back after "
                    "rise passed checks. SIGHUP reloads CONFIG, SIGTERM exits. With "
                    "metrics: {listen: ADDR:PORT} in CONFIG it serves Prometheus metrics "
                    "at http://ADDR:PORT/metrics (and exits 1 at start if it cannot bind).")
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("--state-file", default=DEFAULT_STATE_FILE)
    p.add_argument("--health-file", default=DEFAULT_HEALTH_FILE)
    p.add_argument("--once", action="store_true",
                   help="run one round of probes, apply the result, exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log every probe result")
    return p


def _raise_nofile() -> int:
    """Probes are sockets: take the hard limit of open files; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def main(argv: list[str] | None = None, *, backends: "Callable[[], Backends] | None" = None) -> int:
    """The ``pask-healthd`` console script. ``backends``: a factory of the kernel's
    backends (default: the real kernel)."""
    from ..errors import ConfigError
    from ..fastpath.config_cache import ConfigCache, cache_file_for
    from ..health.daemon import MAX_INFLIGHT, HealthDaemon

    args = parser().parse_args(argv)
    log = EventLog(verbose=args.verbose)
    cache = ConfigCache(cache_file_for(args.state_file))
    try:
        config, fwmarks = load_inputs(args.config, args.state_file, cache)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        print(f"{args.config}: {len(e.problems)} problem(s)", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        print(f"{args.config}: cannot read config: {e.strerror or e}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as e:                       # a corrupt state file
        print(f"pask-healthd: {e}", file=sys.stderr)
        return EXIT_ERROR

    if backends is None:
        from ..backend.real import real_backends
        backends = real_backends
    nofile = _raise_nofile()
    inflight = max(16, min(MAX_INFLIGHT, (nofile - 64) // 2))
    kernel = backends()
    from ..health.announce import BgpAnnouncer     # bgp: withdraws a VIP without usable servers
    announcer = BgpAnnouncer(kernel.engines, args.state_file, log)
    daemon = HealthDaemon(config, kernel, fwmarks=fwmarks,
                          health_file=args.health_file,
                          previous=load_previous_health(args.health_file, log),
                          log=log, max_inflight=inflight,
                          loader=lambda: load_inputs(args.config, args.state_file, cache),
                          announcer=announcer)
    try:
        daemon.observe()
    except Exception as e:
        print(f"pask-healthd: cannot read IPVS: {e}", file=sys.stderr)
        return EXIT_ERROR
    if config.metrics is not None and not args.once:
        try:
            where = serve_metrics(daemon, backends, args.state_file, log)
        except OSError as e:
            print(f"pask-healthd: cannot serve metrics on {config.metrics.listen} "
                  f"(metrics.listen): {e.strerror or e}", file=sys.stderr)
            return EXIT_ERROR
        log("metrics", listen=where)
    log("start", config=args.config, servers=len(daemon.checks),
        services=len(config.services), once=args.once)
    if args.once:
        asyncio.run(daemon.run_round())
        return EXIT_OK if not daemon.dirty else EXIT_ERROR

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, daemon.stop)
        loop.add_signal_handler(signal.SIGINT, daemon.stop)
        loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
        watch = asyncio.create_task(announcer.watch(daemon))
        try:
            await daemon.serve()
        finally:
            watch.cancel()

    asyncio.run(run())
    log("stop", message="kernel left as it is")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
