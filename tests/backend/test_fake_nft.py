"""backend/fake_nft.py: the in-memory ``inet pask`` behaves like libnftables + kernel.

Pure and fast; tests/test_nft_backend.py holds the same cases against the real one.
"""

from __future__ import annotations

import errno

import pytest

from pask_ipvs.backend.base import BackendError, NftBackend
from pask_ipvs.backend.fake_nft import FakeNft
from kernel_cases import NFT_REFUSALS
from pask_ipvs.backend.nft import DIGEST_CHAIN, listing_digest, replace_commands
from pask_ipvs.model import Filter, FilterAction, NatMode, PortRange, Protocol, Service
from pask_ipvs.objects import NftObserved, NftTable
from pask_ipvs.render.nft import render_table
from builders import svc

INC, EXC = FilterAction.INCLUDE, FilterAction.EXCLUDE


def mixed_services() -> tuple[list[Service], dict[str, int]]:
    services = [
        svc("web", "10.99.100.1", mode=NatMode.BOTH_NAT, snat_ip="10.99.2.1", filters=(
            Filter(INC, Protocol.TCP, "10.99.1.0/24", "10.99.100.1/32", PortRange(1024, 65535), PortRange(80, 80)),
            Filter(EXC, src="10.99.1.3/32"))),
        svc("dns", "10.99.100.2", 53, proto=Protocol.UDP, mode=NatMode.LAN_TO_LAN,
            local_networks=("10.99.2.0/24",), filters=(Filter(INC, dst="10.99.100.2", dst_port=PortRange(53, 53)),)),
        svc("broad", "10.99.100.3", filters=(Filter(INC, src="10.99.1.2/32", protocol=Protocol.UDP),)),
        svc("plain", "10.99.100.2", 8080, mode=NatMode.BOTH_NAT, snat_ip="10.99.2.1"),
        svc("all", "10.99.100.4", 0, mode=NatMode.BOTH_NAT, snat_ip="10.99.2.1"),
        svc("l2l", "10.99.100.4", 443, mode=NatMode.LAN_TO_LAN, local_networks=("10.99.2.0/24", "10.99.5.0/24")),
        svc("v6", "fd00:99::1", mode=NatMode.BOTH_NAT, snat_ip="fd00:2::1",
            filters=(Filter(INC, Protocol.TCP, dst="fd00:99::1", dst_port=PortRange(80, 80)),)),
        svc("v6l2l", "fd00:99::1", 443, mode=NatMode.LAN_TO_LAN, local_networks=("fd00:2::/64",)),
    ]
    return services, {"web": 0x10000, "dns": 0x10001, "broad": 0x10002, "v6": 0x10003}


def mixed_table() -> NftTable:
    table = render_table(*mixed_services())
    assert table is not None
    return table


def other_table() -> NftTable:
    svcs, marks = mixed_services()
    table = render_table(svcs[:2], marks)
    assert table is not None
    return table


def test_it_is_an_nft_backend():
    backend: NftBackend = FakeNft()
    assert backend.observe() is None


def test_replace_observe_and_stable_digest():
    fake, table = FakeNft(), mixed_table()
    seen = fake.replace(table)
    assert seen == fake.observe()
    assert seen.comment == table.digest
    again = fake.replace(table)
    assert again == seen                       # same content, same listing digest
    assert fake.replace_count == 2
    fake.replace(other_table())
    assert fake.observe().comment == other_table().digest
    assert fake.observe().listing_digest != seen.listing_digest


def test_digest_lives_in_a_rule_comment_of_the_digest_chain():
    fake, table = FakeNft(), mixed_table()
    fake.replace(table)
    rules = [o["rule"] for o in fake.listing() if "rule" in o and o["rule"]["chain"] == DIGEST_CHAIN]
    assert rules == [{"family": "inet", "table": "pask", "chain": DIGEST_CHAIN, "handle": rules[0]["handle"],
                      "expr": [{"return": None}], "comment": table.digest}]


def test_counters_moving_do_not_change_the_listing_digest():
    fake = FakeNft()
    seen = fake.replace(mixed_table())
    fake.bump_counters(packets=5)
    assert any(st.get("counter", {}) and st["counter"]["packets"] == 5
               for o in fake.listing() if "rule" in o for st in o["rule"]["expr"])
    assert fake.observe() == seen


def test_tamper_changes_the_listing_not_the_comment():
    fake, table = FakeNft(), mixed_table()
    seen = fake.replace(table)
    fake.tamper("postrouting")
    now = fake.observe()
    assert now.comment == seen.comment == table.digest
    assert now.listing_digest != seen.listing_digest
    assert fake.replace(table) == seen          # replacing restores the exact listing digest


def test_handles_do_not_enter_the_digest():
    a, b = FakeNft(), FakeNft()
    b.replace(other_table())                    # b's handles are now further along
    assert a.replace(mixed_table()) == b.replace(mixed_table())
    la, lb = a.listing(), b.listing()
    assert la != lb and listing_digest(la) == listing_digest(lb)


@pytest.mark.parametrize("case", sorted(NFT_REFUSALS))
def test_refused_content_leaves_the_old_table_exactly(case):
    cmds, code = NFT_REFUSALS[case]
    fake = FakeNft()
    seen = fake.replace(mixed_table())
    before = fake.listing()
    with pytest.raises(BackendError) as exc:
        fake.replace(NftTable.from_commands(cmds))
    assert exc.value.errno == code, str(exc.value)
    with pytest.raises(BackendError) as exc:
        fake.check(NftTable.from_commands(cmds))
    assert exc.value.errno == code
    assert fake.listing() == before and fake.observe() == seen
    assert fake.replace_count == 1


def test_refused_content_on_an_empty_host_leaves_no_table():
    fake = FakeNft()
    with pytest.raises(BackendError):
        fake.replace(NftTable.from_commands(NFT_REFUSALS["jump to a missing chain"][0]))
    assert fake.observe() is None


def test_check_changes_nothing():
    fake, table = FakeNft(), mixed_table()
    fake.check(table)
    assert fake.observe() is None and fake.check_count == 1 and fake.replace_count == 0
    seen = fake.replace(table)
    fake.check(other_table())
    assert fake.observe() == seen


def test_delete_is_idempotent():
    fake = FakeNft()
    fake.delete()
    fake.replace(mixed_table())
    fake.delete()
    assert fake.observe() is None
    fake.delete()
    assert fake.observe() is None


def test_other_tables_are_never_touched():
    other = {("ip", "other"): ["table ip other { chain c { counter accept } }"],
             ("ip", "pask"): ["a table named pask in another family"]}
    fake = FakeNft(other_tables=other)
    fake.replace(mixed_table())
    with pytest.raises(BackendError) as exc:
        fake.replace(NftTable.from_commands(NFT_REFUSALS["another table"][0]))
    assert exc.value.errno == errno.EPERM
    fake.delete()
    assert fake.other_tables == other


def test_fail_next_raises_once_and_keeps_the_table():
    fake = FakeNft()
    seen = fake.replace(mixed_table())
    fake.fail_next = BackendError("nft replace: Error: Could not process rule: Device or resource busy",
                                  errno.EBUSY)
    with pytest.raises(BackendError) as exc:
        fake.replace(other_table())
    assert exc.value.retryable
    assert fake.observe() == seen
    fake.replace(other_table())
    assert fake.observe().comment == other_table().digest


def test_the_transaction_is_the_shared_one():
    table = mixed_table()
    cmds = replace_commands(table)
    assert cmds[:2] == [{"add": {"table": {"family": "inet", "name": "pask"}}},
                        {"delete": {"table": {"family": "inet", "name": "pask"}}}]
    assert cmds[2:-2] == table.command_list()
    assert cmds[-1]["add"]["rule"]["comment"] == table.digest


def test_a_large_rendered_table_loads_in_the_fake():
    services = []
    marks = {}
    for i in range(1024):
        vip = f"10.99.{128 + i // 250}.{i % 250 + 1}"
        filters = (Filter(INC, Protocol.TCP, dst=vip, dst_port=PortRange(80, 80)),) if i % 2 else ()
        if filters:
            marks[f"s{i}"] = 0x10000 + i
        mode = (NatMode.BOTH_NAT, NatMode.LAN_TO_LAN)[i % 4 // 2]
        services.append(svc(f"s{i}", vip, mode=mode, filters=filters,
                            snat_ip="10.99.2.1" if mode is NatMode.BOTH_NAT else None,
                            local_networks=("10.99.2.0/24",) if mode is NatMode.LAN_TO_LAN else ()))
    table = render_table(services, marks)
    fake = FakeNft()
    seen = fake.replace(table)
    assert isinstance(seen, NftObserved) and seen.comment == table.digest
