"""Fixtures for the integration suite: a real kernel with IPVS, real traffic.

Run it with ``integration/run`` (boots the test VM when this kernel lacks IPVS).
Run directly, it refuses clearly (never skips) when it is not root or the
kernel has no IPVS: a skipped kernel test must never pass for a green one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab import Lab  # noqa: E402


def _has_ipvs() -> bool:
    if not os.path.exists("/proc/net/ip_vs"):
        subprocess.run(["modprobe", "ip_vs"], capture_output=True)
    return os.path.exists("/proc/net/ip_vs")


HOST_ONLY = Path(__file__).resolve().parent / "host"


def _host_only(config: pytest.Config) -> bool:
    """Only integration/host/ asked for: network namespaces and nftables, no IPVS needed."""
    paths = [Path(a.split("::")[0]).resolve() for a in config.args if not a.startswith("-")]
    return bool(paths) and all(p.is_relative_to(HOST_ONLY) for p in paths)


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.geteuid() != 0:
        pytest.exit("integration tests need root (network namespaces, IPVS): run integration/run as root",
                    returncode=1)
    if not _host_only(session.config) and not _has_ipvs():
        pytest.exit("this kernel has no IPVS: run the suite through integration/run, which boots the test VM",
                    returncode=1)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """The whole topology with echo servers running; one per test module."""
    lab = Lab().up()
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture
def lb(lab: Lab) -> Lab:
    """The lab with a fresh load balancer: no IPVS, no nft, no VIP, no pask state."""
    lab.reset_lb()
    return lab


@pytest.fixture
def apply(lb: Lab):
    """``apply(config_dict_or_yaml, *flags, expect=None) -> CompletedProcess`` on a fresh LB."""
    return lb.apply
