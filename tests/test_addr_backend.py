"""The address backend against this host's kernel, inside a throwaway network namespace."""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.netns

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BODY = textwrap.dedent("""
    import subprocess
    from pask_ipvs.backend.addr import IPRouteAddr
    from pask_ipvs.kernel import VipAddress
    # this host has no dummy module: a bridge stands in for pask0
    subprocess.run(["ip", "link", "add", "pask0", "type", "bridge"], check=True)
    a = IPRouteAddr()
    assert a.observe("nope0") == (None, frozenset())
    link, vips = a.observe("pask0")
    assert link.kind == "bridge" and not link.up and vips == frozenset()
    assert a._ipr is None, "observing must not import pyroute2"
    a.add_link("pask0")                       # exists: only set up
    v = VipAddress("pask0", "10.99.100.1", 32)
    a.add_address(v); a.add_address(v)        # EEXIST is fine
    link, vips = a.observe("pask0")
    assert link.up and vips == {v}, vips
    a.delete_address(v); a.delete_address(v)  # already gone is fine
    assert a.observe("pask0")[1] == frozenset()
    print("ok")
""")


def test_observe_add_delete_in_a_netns():
    if os.geteuid() != 0:
        pytest.fail("needs root for a network namespace (run the unit suite as root)")
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", BODY], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
