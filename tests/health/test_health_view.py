"""pask-healthd's indexed picture of the IPVS table agrees with the plain table operations."""

from __future__ import annotations

import copy

from pask_ipvs.backend.fake import fake_backends
from pask_ipvs.health.view import KernelView
from pask_ipvs.objects import DestKey, IpvsDest, IpvsService, ServiceKey
from pask_ipvs.plan import ADD, DELETE, SET, Op

KEYS = [ServiceKey.virtual("tcp", f"10.99.100.{i}", 80) for i in range(1, 5)]


def kernel():
    b = fake_backends()
    b.ipvs.seed([IpvsService(k, "rr") for k in KEYS],
                [IpvsDest(k, f"10.99.2.{j}", 8080, "masq", j) for k in KEYS for j in range(1, 4)])
    return b


def test_replace_is_the_tables_own_replaced_in_place():
    b = kernel()
    before = b.ipvs.observe()
    view = KernelView(copy.deepcopy(before))
    b.ipvs.seed((), [IpvsDest(KEYS[1], "10.99.2.9", 8080, "masq", 9)])          # one more dest
    b.ipvs.services.pop(KEYS[2]); b.ipvs.dests.pop(KEYS[2])                      # a service gone
    fresh = b.ipvs.observe_services(KEYS[1:3])
    view.replace(fresh, KEYS[1:3])
    assert view.ipvs == before.replaced(fresh, KEYS[1:3]) == b.ipvs.observe()
    assert view.ipvs.service_digests == b.ipvs.observe().service_digests
    assert not view.has(KEYS[2]) and view.of([KEYS[2]]).ipvs.dests == {}


def test_of_holds_just_those_services():
    view = KernelView(kernel().ipvs.observe())
    sub = view.of([KEYS[0], ServiceKey.virtual("tcp", "10.99.100.99", 80)])
    assert list(sub.ipvs.services) == [KEYS[0]]
    assert {d.service for d in sub.ipvs.dests} == {KEYS[0]} and len(sub.ipvs.dests) == 3


def test_written_follows_the_ops_and_forgets_those_fingerprints():
    view = KernelView(kernel().ipvs.observe())
    old = view.ipvs.dests[DestKey(KEYS[0], "10.99.2.1", 8080)]
    new = IpvsDest(KEYS[1], "10.99.2.7", 8080, "masq", 7)
    gone = view.ipvs.dests[DestKey(KEYS[3], "10.99.2.3", 8080)]
    view.written([Op(SET, "dest", "a", old, old._replace(weight=0)), Op(ADD, "dest", "b", None, new),
                  Op(DELETE, "dest", "c", gone, None)])
    assert view.ipvs.dests[old.key].weight == 0 and view.ipvs.dests[new.key] == new
    assert gone.key not in view.ipvs.dests and gone.key not in view.of([KEYS[3]]).ipvs.dests
    assert new.key in view.of([KEYS[1]]).ipvs.dests
    assert [view.service_digest(k) is None for k in KEYS] == [True, True, False, True]
