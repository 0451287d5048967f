"""The address backend against this host's kernel, inside a throwaway network namespace."""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.netns

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BODY = textwrap.dedent("""
    import subprocess
    from pask_ipvs.backend.addr import IPRouteAddr
    from pask_ipvs.backend.base import BackendError
    from pask_ipvs.objects import VipAddress
    # this host has no dummy module: a bridge stands in for pask0
    subprocess.run(["ip", "link", "add", "pask0", "type", "bridge"], check=True)
    a = IPRouteAddr()
    assert a.observe("nope0") == (None, frozenset())
    link, vips = a.observe("pask0")
    assert link.kind == "bridge" and not link.up and vips == frozenset()
    a.add_link("pask0")                       # exists: only set up
    assert a.observe("pask0")[0].up
    import sys
    assert "pyroute2" not in sys.modules, "the address backend must not import pyroute2"
    # this host's kernel has no dummy driver: the error says so, and names the link
    try:
        a.add_link("pask9")
    except BackendError as e:
        assert "pask9" in str(e) and "dummy module" in str(e), e
    else:
        raise AssertionError("add_link without a dummy driver must fail")
    # the batch path the executor uses: one ip -batch for every op
    from pask_ipvs.plan import Op
    b = IPRouteAddr()
    vs = [VipAddress("pask0", f"10.99.100.{i}", 32) for i in range(1, 51)]
    adds = [Op("add", "address", str(v), None, v) for v in vs]
    assert b.apply(adds) == [] and b.apply(adds[:3]) == []          # again: no error
    assert b.observe("pask0")[1] == frozenset(vs)
    dels = [Op("delete", "address", str(v), v, None) for v in vs[:10]]
    assert b.apply(dels) == [] and b.apply(dels[:2]) == []          # already gone: no error
    assert b.observe("pask0")[1] == frozenset(vs[10:])
    bad = VipAddress("nope0", "10.99.100.200", 32)
    errs = b.apply([adds[20], Op("add", "address", str(bad), None, bad), adds[21]])
    assert [e.op.after for e in errs] == [bad], errs
    assert "pyroute2" not in sys.modules, "the batch path must not import pyroute2"
    print("ok")
""")


def test_observe_add_delete_in_a_netns():
    if os.geteuid() != 0:
        pytest.fail("needs root for a network namespace (run the unit suite as root)")
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", BODY], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
