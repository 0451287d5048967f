"""The HA engines' files, rendered from the model: keepalived.conf (VRRP only: addresses,
never a virtual_server), its notify script, and conntrackd.conf (FTFW over peer_link).

Pure text; pask_ipvs.ha decides what goes in, backend/engines.py writes and runs them.
The kernel-side facts these follow are in docs/kernel-facts.md "An active/standby pair".
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..objects import Engine, EngineFile, VipAddress, family_of
from .engine_dir import EngineDir

if TYPE_CHECKING:
    from ..model import Ha, HaNode

CONNTRACKD_PORT = 3780
ENGINE_DIR_NAME = "ha"
HEADER = "# Rendered by pask-apply (the config's ha:) for node {node}: do not edit, pask-apply rewrites it.\n"


class EnginePaths(EngineDir):
    """A node's HA engine files (keepalived, its notify script, conntrackd)."""

    NAME = ENGINE_DIR_NAME

    def __getattr__(self, name: str) -> str:
        files = {"keepalived_conf": "keepalived.conf", "keepalived_pid": "keepalived.pid",
                 "vrrp_pid": "keepalived-vrrp.pid", "notify": "notify.sh", "role": "role",
                 "conntrackd_conf": "conntrackd.conf", "conntrackd_ctl": "conntrackd.ctl",
                 "conntrackd_lock": "conntrackd.lock"}
        if name not in files:
            raise AttributeError(name)
        return os.path.join(self.dir, files[name])


def keepalived_conf(ha: "Ha", node: "HaNode", peer: "HaNode", addresses: list[VipAddress],
                    tracked: list[str], paths: EnginePaths, vips: list[VipAddress] = ()) -> str:
    """``addresses``: the floating addresses, in the VRRP adverts; ``vips``: excluded from
    them. A VRRPv2 advert lists its addresses and keepalived drops an advert whose list
    differs from its own: were the VIPs in it, applying a config with one more VIP on
    one node and then the other would leave each ignoring the other, both MASTER (seen
    in the VM). The floating addresses are the pair's identity and rarely change."""
    v4 = [a for a in addresses if family_of(a.addr) == family_of(node.address)]
    other = [a for a in addresses if a not in v4] + list(vips)
    lines = [HEADER.format(node=node.name).rstrip("\n"),
             "global_defs {",
             f"    router_id {node.name}",
             "    script_user root",
             "    enable_script_security",
             # a new MASTER announces every address at once and again after 1 s: clients and
             # servers switch their ARP/ND entries to it without waiting for a timeout
             "    vrrp_garp_master_delay 1",
             "    vrrp_garp_master_repeat 3",
             "}",
             "",
             "vrrp_instance pask {",
             # both nodes start as BACKUP: the higher priority wins an election, and with
             # nopreempt a returning node never takes the addresses back
             "    state BACKUP",
             f"    interface {ha.peer_link}",
             f"    virtual_router_id {ha.virtual_router_id}",
             f"    priority {node.priority}",
             f"    advert_int {ha.advert_interval}",
             f"    preempt_delay {ha.preempt_delay}" if ha.preempt else "    nopreempt",
             f"    unicast_src_ip {node.address}",
             "    unicast_peer {",
             f"        {peer.address}",
             "    }"]
    if tracked:
        lines += ["    track_interface {", *(f"        {i}" for i in tracked), "    }"]
    lines += ["    virtual_ipaddress {",
              *(f"        {a.addr}/{a.prefixlen} dev {a.interface}" for a in v4),
              "    }"]
    if other:   # not in the adverts (the VIPs, the other family); keepalived moves them all the same
        lines += ["    virtual_ipaddress_excluded {",
                  *(f"        {a.addr}/{a.prefixlen} dev {a.interface}" for a in other),
                  "    }"]
    lines += [f"    notify {paths.notify}", "}", ""]
    return "\n".join(lines)


def notify_script(ha: "Ha", node: "HaNode", paths: EnginePaths, vips: list[str] = ()) -> str:
    """keepalived runs it on each state change (args: INSTANCE name STATE priority). It
    records the role for pask-status and pask-healthd, then moves conntrackd's state the
    way conntrackd's primary-backup.sh does.

    A node that leaves MASTER keeps the kernel's conntrack entries of the flows it served,
    and they go stale at once (the peer serves them now). Were it to take over again
    while they live (they last days), conntrackd's commit could not replace them and the
    servers' answers, out of their window, would be reset. So on BACKUP and FAULT the
    entries of flows to the VIPs go: this node serves none of them then."""
    ct = f"conntrackd -C {paths.conntrackd_conf}"
    lines = ["#!/bin/sh", HEADER.format(node=node.name).rstrip("\n"),
             "state=$3",
             f'printf "%s %s\\n" "$state" "$(date +%s)" > {paths.role}.tmp && mv -f {paths.role}.tmp {paths.role}']
    if ha.sync_connections:
        drop = "".join(f"conntrack -D{' -f ipv6' if family_of(v) == 6 else ''} -d {v} >/dev/null 2>&1; "
                       for v in vips)
        lines += ['case "$state" in',
                  # the peer's connections, kept in the external cache, go into the kernel;
                  # then this node's own view is rebuilt and sent to the peer
                  f"    MASTER) {ct} -c; {ct} -f; {ct} -R; {ct} -B ;;",
                  # drop what went stale, then ask the (new) master for its whole table
                  f"    BACKUP) {drop}{ct} -n ;;",
                  f"    FAULT) {drop}{ct} -t ;;",
                  "esac"]
    lines += ["exit 0", ""]
    return "\n".join(lines)


def conntrackd_conf(ha: "Ha", node: "HaNode", peer: "HaNode", paths: EnginePaths) -> str:
    v = "IPv6" if family_of(node.address) == 6 else "IPv4"
    ignore = ["127.0.0.1", "::1", node.address, peer.address]
    return "\n".join([
        HEADER.format(node=node.name).rstrip("\n"),
        "Sync {",
        "    Mode FTFW {",
        "        DisableExternalCache Off",
        "        StartupResync on",
        "    }",
        "    UDP {",
        f"        {v}_address {node.address}",
        f"        {v}_Destination_Address {peer.address}",
        f"        Port {CONNTRACKD_PORT}",
        f"        Interface {ha.peer_link}",
        "        SndSocketBuffer 1249280",
        "        RcvSocketBuffer 1249280",
        "        Checksum on",
        "    }",
        "}",
        "General {",
        "    HashSize 32768",
        "    HashLimit 131072",
        "    LogFile off",
        "    Syslog on",
        f"    LockFile {paths.conntrackd_lock}",
        "    UNIX {",
        f"        Path {paths.conntrackd_ctl}",
        "    }",
        "    NetlinkBufferSize 2097152",
        "    NetlinkBufferSizeMaxGrowth 8388608",
        "    Filter From Userspace {",
        "        Protocol Accept {",
        "            TCP",
        "            UDP",
        "            SCTP",
        "        }",
        "        Address Ignore {",
        *(f"            {'IPv6' if family_of(a) == 6 else 'IPv4'}_address {a}" for a in ignore),
        "        }",
        "    }",
        "}",
        ""])


def keepalived_engine(ha: "Ha", node: "HaNode", peer: "HaNode", addresses: list[VipAddress],
                      vips: list[VipAddress], tracked: list[str], paths: EnginePaths) -> Engine:
    conf = keepalived_conf(ha, node, peer, addresses, tracked, paths, vips)
    run = ("keepalived", "--vrrp", "--use-file", paths.keepalived_conf,
           "--pid", paths.keepalived_pid, "--vrrp_pid", paths.vrrp_pid)
    return Engine("keepalived",
                  (EngineFile(paths.keepalived_conf, conf),
                   EngineFile(paths.notify, notify_script(ha, node, paths, [v.addr for v in vips]), 0o755)),
                  argv=run, foreground_argv=(*run, "--dont-fork"), reload="hup",
                  needs=("conntrackd", "conntrack") if ha.sync_connections else ())


def conntrackd_engine(ha: "Ha", node: "HaNode", peer: "HaNode", paths: EnginePaths) -> Engine:
    conf = conntrackd_conf(ha, node, peer, paths)
    return Engine("conntrackd", (EngineFile(paths.conntrackd_conf, conf),),
                  argv=("conntrackd", "-d", "-C", paths.conntrackd_conf),
                  foreground_argv=("conntrackd", "-C", paths.conntrackd_conf),
                  reload="restart", stale=(paths.conntrackd_lock, paths.conntrackd_ctl))
