"""The HA pair (docs/design.md "ha"), with real packets: two LB namespaces applied from one
config file by pask-apply, which starts keepalived (VRRP only), both IPVS sync threads and
conntrackd; long-lived streams through the VIP survive the active node's death.

Topology: integration/ha_lab.py (client hc1, LBs hlb1/hlb2, servers hrs1-3; the clients'
gateway 10.99.1.1, the servers' gateway 10.99.2.1 and the VIP 10.99.1.100 float).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from ha_lab import (CLIENT, LB1, LB2, NODES, SERVER_GW, CLIENT_GW, VIP, HaLab, ha_config,
                    stream_ask, stream_service)
from lab import APPLY_TIMEOUT, ROOT, run, wait_for

ADVERT = 1
FLOATING = (CLIENT_GW, SERVER_GW, VIP)
MODES = ("dest-nat", "both-nat", "l2-dsr")
KILLS = ("keepalived-killed", "all-links-down", "server-link-down")


@pytest.fixture(scope="module")
def lab():
    lab = HaLab().up()
    yield lab
    lab.down()


def config(mode: str = "dest-nat", **ha):
    return ha_config(stream_service(nat_mode=mode), **ha)


def apply_both(lab: HaLab, cfg, *flags: str, expect: int = 0, first: str = LB1):
    """The same file on both nodes, ``first`` first (its keepalived starts first)."""
    path = lab.write_config(cfg) if isinstance(cfg, dict) else cfg
    for ns in (first, lab.other(first)):
        lab.pask_apply(ns, path, *flags, expect=expect)
    return path


def holders(lab: HaLab) -> dict[str, list[str]]:
    return {a: lab.holders_of(a) for a in FLOATING}


def wait_master(lab: HaLab, ns: str) -> None:
    """Until ``ns`` holds every floating address and the VIP, and the other holds none."""
    wait_for(lambda: all(h == [ns] for h in holders(lab).values()),
             what=f"{ns} the only holder of {FLOATING} (now {holders(lab)})")


def role_now(lab: HaLab, ns: str) -> str:
    """The role keepalived's notify script last recorded (cheap: pask-status starts a
    Python, which costs seconds under TCG; test 1 checks pask-status itself)."""
    try:
        return (lab.node_dir(ns) / "ha" / "role").read_text().split()[0]
    except (OSError, IndexError):
        return "UNKNOWN"


def role(lab: HaLab, ns: str) -> dict:
    out = run(["ip", "netns", "exec", ns, str(ROOT / ".venv/bin/pask-status"), "--format", "json",
               "--state-file", str(lab.state_file(ns)), "--health-file", str(lab.health_file(ns))]).stdout
    return json.loads(out)["ha"]


def wait_role(lab: HaLab, ns: str, want: str) -> None:
    wait_for(lambda: role_now(lab, ns) == want, what=f"{ns} in role {want} (now {role_now(lab, ns)})")


def settle_pair(lab: HaLab, cfg) -> tuple[str, str]:
    """Apply on both, wait for one MASTER and one BACKUP: (master, backup) namespaces."""
    apply_both(lab, cfg)
    wait_for(lambda: any(all(h == [ns] for h in holders(lab).values()) for ns in NODES),
             what=f"one LB holding every floating address (now {holders(lab)})")
    master = lab.holder_of(VIP)
    backup = lab.other(master)
    wait_role(lab, master, "MASTER")
    wait_role(lab, backup, "BACKUP")
    return master, backup


def synced(lab: HaLab, backup: str, stream) -> bool:
    """The standby's IPVS table has this stream's connections (the sync daemon carried
    them), not just as many established ones (earlier streams' copies live for minutes)."""
    have = {c["client"] for c in lab.ipvs_conns(backup)
            if c["vip"] == f"{VIP}:9000" and c["state"] == "ESTABLISHED"}
    return set(stream.locals()) <= have


def kill(lab: HaLab, ns: str, how: str) -> None:
    if how == "keepalived-killed":
        lab.kill(ns, "keepalived")
    elif how == "all-links-down":
        lab.all_links_down(ns)
    else:
        lab.link_down(ns, "eth1")


def revive(lab: HaLab, ns: str, how: str, cfg_path) -> None:
    """The dead node back: its links up, or (keepalived killed) pask-apply, which starts
    the dead keepalived again."""
    if how == "keepalived-killed":
        cp = lab.pask_apply(ns, cfg_path, expect=0)
        assert "+ engine keepalived" in cp.stdout, cp.stdout
    else:
        lab.all_links_up(ns)
    wait_role(lab, ns, "BACKUP")


def prepare(lab: HaLab, mode: str) -> None:
    if mode == "l2-dsr":
        lab.prepare_l2_dsr()
    else:
        lab.unprepare_l2_dsr()


# -- 1. one file, both nodes ------------------------------------------------------------------

def test_both_nodes_apply_one_file_and_exactly_one_holds_the_addresses(lab):
    prepare(lab, "dest-nat")
    path = lab.write_config(config())
    master, backup = settle_pair(lab, path)
    assert master == LB1                       # the higher priority, started first
    dumps = [lab.ipvsadm(ns, "-Sn").stdout for ns in NODES]
    assert dumps[0] == dumps[1] and f"-A -t {VIP}:9000" in dumps[0]
    for ns in NODES:                           # both sync threads on both nodes
        daemons = lab.ipvsadm(ns, "-L", "--daemon").stdout
        assert "master sync daemon (mcast=eth2, syncid=51" in daemons
        assert "backup sync daemon (mcast=eth2, syncid=51" in daemons
        assert lab.pids(ns, "keepalived") and lab.pids(ns, "conntrackd")
        assert role(lab, ns)["keepalived"] == "running"
    # new connections work through the active node, and a re-run changes nothing
    assert stream_ask(CLIENT, VIP) in ("hrs1", "hrs2", "hrs3")
    for ns in NODES:
        lab.pask_apply(ns, path, "--detailed-exitcode", expect=0)
    assert holders(lab) == {a: [master] for a in FLOATING}


# -- 2. a stream survives the active node's death, three ways --------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_a_stream_survives_the_active_nodes_death_three_ways(lab, mode):
    """One stream of 4 connections through three failovers in a row: keepalived killed
    (-9), all links down, the server-side link down (FAULT). The dead node comes back
    (pask-apply restarts a dead keepalived) as BACKUP before the next death."""
    prepare(lab, mode)
    path = lab.write_config(config(mode))
    master, backup = settle_pair(lab, path)
    stream = lab.stream(connections=4)
    takeovers: list[float] = []
    events: list[str] = []
    try:
        for how in KILLS:
            wait_for(lambda: synced(lab, backup, stream), what=f"the stream's 4 connections synced to "
                     f"{backup} (it has {lab.ipvs_conns(backup)})")
            killed = time.time()
            kill(lab, master, how)
            wait_for(lambda: backup in lab.holders_of(VIP) and backup in lab.holders_of(SERVER_GW),
                     what=f"{backup} taking the addresses ({how})")
            takeovers.append(time.time())
            events.append(f"{how}: {master} killed at {killed:.2f}, {backup} took over at {takeovers[-1]:.2f}")
            wait_role(lab, backup, "MASTER")
            if how == "server-link-down":
                wait_role(lab, master, "FAULT")
            # new connections are answered by the new master
            wait_for(lambda: _answers(CLIENT), what=f"a new connection through the VIP answered ({how})")
            revive(lab, master, how, path)
            events.append(f"{master} back as BACKUP at {time.time():.2f}; guard drops "
                          + ", ".join(f"{ns}: {_guard_drops(lab, ns)}" for ns in NODES))
            master, backup = backup, master
        # the observation window: the stream keeps going through the last master, and the
        # node that came back (BACKUP, nopreempt) takes nothing back, for several adverts
        deadline = time.monotonic() + 3 * ADVERT + 2
        while time.monotonic() < deadline:
            assert holders(lab) == {a: [master] for a in FLOATING}, holders(lab)
            time.sleep(0.2)
    finally:
        report = stream.stop()
    assert report["clean"], (f"{mode}: {report['problems']}; errors at "
                             f"{[c['error_at'] for c in report['connections']]}; events: {events}")
    for c in report["connections"]:   # one server each, answered well after the last takeover
        assert len(c["servers"]) == 1 and c["last_answer"] > takeovers[-1] + 2, c


def _guard_drops(lab: HaLab, ns: str) -> str:
    """The ha_guard rule's counter (both-nat only), for the failure message."""
    out = run(["nft", "list", "chain", "inet", "pask", "ha_guard"], ns=ns, check=False).stdout
    return " ".join(w for w in out.split() if w.isdigit())[:40] or "-"


def _answers(ns: str) -> bool:
    try:
        return bool(stream_ask(ns, VIP, timeout=5))
    except OSError:
        return False


# -- 3. the old master returns (without preempt: in test 2) -----------------------------------

def test_with_preempt_the_returning_node_takes_over_after_its_delay_and_loses_nothing(lab):
    prepare(lab, "both-nat")
    path = lab.write_config(config("both-nat", preempt=True))
    # the config says preempt: true, preempt_delay default; make hlb1 the master
    master, backup = settle_pair(lab, path)
    if master != LB1:
        lab.all_links_down(master)
        wait_for(lambda: LB1 in lab.holders_of(VIP), what="hlb1 taking the VIP")
        lab.all_links_up(master)
        wait_master(lab, LB1)
    stream = lab.stream(connections=4)
    try:
        wait_for(lambda: synced(lab, LB2, stream), what="the stream synced to hlb2")
        lab.all_links_down(LB1)
        wait_for(lambda: LB2 in lab.holders_of(VIP), what="hlb2 taking the VIP")
        lab.all_links_up(LB1)
        returned = time.monotonic()
        wait_role(lab, LB1, "BACKUP")
        wait_master(lab, LB1)                      # preempt: it takes the addresses back...
        assert time.monotonic() - returned >= 5    # ...only after preempt_delay (10 s), synced meanwhile
        wait_for(lambda: _answers(CLIENT), what="new connections through hlb1")
    finally:
        report = stream.stop()
    assert report["clean"], report["problems"]


# -- 5. an edit applied on both nodes under load -----------------------------------------------

def test_an_edit_applied_on_both_nodes_fails_no_request_and_moves_no_address(lab):
    prepare(lab, "dest-nat")
    master, backup = settle_pair(lab, lab.write_config(config()))
    failures: list[str] = []
    moved: list[dict] = []
    done = threading.Event()
    count = 0

    def loop():
        nonlocal count
        while not done.is_set():
            try:
                stream_ask(CLIENT, VIP, timeout=10)
                count += 1
            except OSError as e:
                failures.append(repr(e))
            h = holders(lab)
            if h != {a: [master] for a in FLOATING}:
                moved.append(h)

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    try:
        wait_for(lambda: count >= 5, what="the request loop running")
        edited = ha_config(stream_service(),
                           stream_service("stream2", scheduler="wrr") | {"vip": "10.99.1.101"})
        path = lab.write_config(edited)
        for ns in (master, backup):
            cp = lab.pask_apply(ns, path, "--detailed-exitcode", expect=2)
            assert "~ engine keepalived keepalived.conf, notify.sh changed (reload)" in cp.stdout, cp.stdout
            assert "engine conntrackd" not in cp.stdout
        before = count
        wait_for(lambda: count >= before + 5, what="requests after the edit")
        wait_for(lambda: lab.holders_of("10.99.1.101") == [master], what="the new VIP on the master")
    finally:
        done.set()
        worker.join(timeout=60)
    assert not failures, failures
    assert not moved, moved[:3]


# -- 6. bad input changes nothing on either node --------------------------------------------------

def test_a_pair_that_cannot_work_changes_nothing_on_either_node(lab):
    prepare(lab, "dest-nat")
    master, _ = settle_pair(lab, lab.write_config(config()))
    before = {ns: (lab.ipvsadm(ns, "-Sn").stdout, lab.pids(ns, "keepalived")) for ns in NODES}
    bad = config()
    bad["ha"]["nodes"][1]["priority"] = bad["ha"]["nodes"][0]["priority"]
    path = lab.write_config(bad)
    for ns in NODES:
        cp = lab.pask_apply(ns, path, expect=1)
        assert f"{path}:" in cp.stderr and "$.ha.nodes[1].priority: priority 200 is also node 'lb1'" in cp.stderr
        assert "nothing was changed" in cp.stderr
    after = {ns: (lab.ipvsadm(ns, "-Sn").stdout, lab.pids(ns, "keepalived")) for ns in NODES}
    assert after == before
    assert holders(lab) == {a: [master] for a in FLOATING}
