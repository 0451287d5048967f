"""services[].application through pask-apply, proven with stock servers and clients.

FTP: vsftpd on every real server (the file it serves names the server, and
vsftpd refuses a data connection from another address than its control
connection's), curl as the client: passive (PASV, EPSV), active (PORT) and
uploads. A download whose data connection reached another server than its
control connection shows as the wrong content, or fails.

TFTP: tftpd-hpa on every real server, and a strict client (apps_tftp) that
accepts an answer only from the address it asked, as PXE ROMs do.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from apps_ftp import FtpServer, curl_ftp, start_vsftpd, start_vsftpd_all
from apps_h323 import h323_call
from apps_tftp import start_tftpd, stop_tftpd, tftp_cli_get, tftp_get, tftp_put
from lab import (CLIENT, CLIENT_IP, CLIENT_IP6, HERE, LAN_CLIENT, LAN_CLIENT_IP, LAN_NET, LB,
                 LB_LAN_IP, LB_LAN_IP6, SERVERS, SERVERS6, VIP, VIP6, Lab, config, ipvs_stats,
                 ns_socket, run, service, wait_for)

PASSIVE = (30000, 30009)
FTP_WAYS = {                      # curl options for each way FTP moves data
    "pasv": ["--disable-epsv"],
    "epsv": [],
    "active": ["--ftp-port", CLIENT_IP],
}


def ftp_service(name: str = "ftp", port: int = 21, **keys) -> dict:
    return service(name, port=port, server_port=21, scheduler="rr", application="ftp", **keys)


def download(way: str, port: int = 21, path: str = "file.txt") -> str:
    cp = curl_ftp(CLIENT, f"ftp://{VIP}:{port}/{path}", *FTP_WAYS[way])
    assert cp.returncode == 0, f"curl {way} ftp://{VIP}:{port}/{path}: rc {cp.returncode}: {cp.stderr}"
    return cp.stdout.strip()


def upload(way: str, name: str, tmp: Path, port: int = 21) -> None:
    src = tmp / name
    src.write_text(f"upload {name}\n")
    cp = curl_ftp(CLIENT, f"ftp://{VIP}:{port}/upload/{name}", "-T", str(src), *FTP_WAYS[way])
    assert cp.returncode == 0, f"curl -T {way}: rc {cp.returncode}: {cp.stderr}"


def unload_ip_vs_ftp(lab: Lab) -> None:
    """A clean start: IPVS connections bound to ip_vs_ftp keep it loaded (EBUSY) until
    their service is gone, so the table goes first."""
    lab.reset_lb()
    run(["modprobe", "-r", "ip_vs_ftp"], check=False)


def ip_vs_ftp_ports() -> str | None:
    p = Path("/sys/module/ip_vs_ftp/parameters/ports")
    return p.read_text().strip() if p.exists() else None


@pytest.fixture(scope="module")
def ftp_servers(lab: Lab) -> Iterator[dict[str, FtpServer]]:
    servers = start_vsftpd_all(lab, pasv_range=PASSIVE)
    yield servers
    for s in servers.values():
        s.stop()


BOTH_NAT_PORT = 2021
LAN_TO_LAN_PORT = 2022


class TestFtpNatModes:
    """dest-nat on 21 and 2121, both-nat on 2021, in one apply: IPVS then keeps conntrack for
    every connection (both-nat needs it), and the dest-nat sessions must not mind."""

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def applied(cls, lab: Lab, ftp_servers) -> None:
        unload_ip_vs_ftp(lab)
        lab.apply(config(ftp_service(), ftp_service("ftp-alt", port=2121),
                         ftp_service("ftp-bnat", port=BOTH_NAT_PORT, nat_mode="both-nat",
                                     snat_ip=LB_LAN_IP),
                         ftp_service("ftp-l2l", port=LAN_TO_LAN_PORT, nat_mode="lan-to-lan",
                                     local_networks=[LAN_NET])), expect=0)

    def test_ip_vs_ftp_is_loaded_with_every_virtual_port(self) -> None:
        assert ip_vs_ftp_ports() == "21,2021,2022,2121"

    @pytest.mark.parametrize("way", list(FTP_WAYS))
    def test_downloads_spread_and_each_data_connection_stays_with_its_control(self, way) -> None:
        got = Counter(download(way) for _ in range(6))
        assert got == {name: 2 for name in SERVERS}, got

    @pytest.mark.parametrize("way", ["epsv", "active"])
    def test_a_virtual_port_other_than_21(self, way) -> None:
        assert download(way, port=2121) in SERVERS

    def test_uploads_land_on_the_servers(self, ftp_servers, tmp_path) -> None:
        for i, way in enumerate(("pasv", "epsv", "active")):
            upload(way, f"up-{way}-{i}.txt", tmp_path)
        landed = sorted(n for s in ftp_servers.values() for n in s.uploads())
        assert landed == ["up-active-2.txt", "up-epsv-1.txt", "up-pasv-0.txt"]

    @pytest.mark.parametrize("way", list(FTP_WAYS))
    def test_both_nat_every_way_and_the_servers_see_snat_ip(self, ftp_servers, way) -> None:
        """vsftpd refuses a data connection whose peer is not its control connection's,
        so a data flow left un-NATed (the server would see the client) fails here."""
        before = {n: len(_connects(s)) for n, s in ftp_servers.items()}
        got = Counter(download(way, port=BOTH_NAT_PORT) for _ in range(3))
        assert got == {name: 1 for name in SERVERS}, got
        peers = {line.split()[-1] for n, s in ftp_servers.items() for line in _connects(s)[before[n]:]}
        assert peers == {LB_LAN_IP}, peers

    def test_both_nat_uploads(self, ftp_servers, tmp_path) -> None:
        for way in ("pasv", "active"):
            upload(way, f"bnat-{way}.txt", tmp_path, port=BOTH_NAT_PORT)
        landed = sorted(n for s in ftp_servers.values() for n in s.uploads() if n.startswith("bnat-"))
        assert landed == ["bnat-active.txt", "bnat-pasv.txt"]

    @pytest.mark.parametrize("way", list(FTP_WAYS))
    def test_lan_to_lan_a_lan_client_every_way_and_the_servers_see_the_vip(self, ftp_servers,
                                                                           way) -> None:
        before = {n: len(_connects(s)) for n, s in ftp_servers.items()}
        opts = ["--ftp-port", LAN_CLIENT_IP] if way == "active" else FTP_WAYS[way]
        got = Counter()
        for _ in range(3):
            cp = curl_ftp(LAN_CLIENT, f"ftp://{VIP}:{LAN_TO_LAN_PORT}/file.txt", *opts)
            assert cp.returncode == 0, f"curl {way} from {LAN_CLIENT}: rc {cp.returncode}: {cp.stderr}"
            got[cp.stdout.strip()] += 1
        assert got == {name: 1 for name in SERVERS}, got
        peers = {line.split()[-1] for n, s in ftp_servers.items() for line in _connects(s)[before[n]:]}
        assert peers == {VIP}, peers

    @pytest.mark.parametrize("way", ["pasv", "active"])
    def test_lan_to_lan_other_clients_keep_their_address(self, ftp_servers, way) -> None:
        before = {n: len(_connects(s)) for n, s in ftp_servers.items()}
        assert download(way, port=LAN_TO_LAN_PORT) in SERVERS
        peers = {line.split()[-1] for n, s in ftp_servers.items() for line in _connects(s)[before[n]:]}
        assert peers == {CLIENT_IP}, peers

    def test_dest_nat_servers_saw_the_client(self, ftp_servers) -> None:
        before = {n: len(_connects(s)) for n, s in ftp_servers.items()}
        for way in FTP_WAYS:
            download(way)
        peers = {line.split()[-1] for n, s in ftp_servers.items() for line in _connects(s)[before[n]:]}
        assert peers == {CLIENT_IP}, peers


class TestIpVsFtpReload:
    """ip_vs_ftp reads its ports only at load: a new FTP port means a reload, which the
    kernel refuses while any FTP connection is bound to the module."""

    def test_a_new_port_reloads_the_module_and_an_open_session_blocks_it(self, lab: Lab,
                                                                         ftp_servers) -> None:
        unload_ip_vs_ftp(lab)
        lab.apply(config(ftp_service()), expect=0)
        assert ip_vs_ftp_ports() == "21"
        cp = lab.apply(config(ftp_service(), ftp_service("ftp-alt", port=2121)), expect=0)
        assert "~ module ip_vs_ftp ports=21 -> ports=21,2121  (reload)" in cp.stdout, cp.stdout
        assert ip_vs_ftp_ports() == "21,2121"
        assert download("epsv", port=2121) in SERVERS

        session = ns_socket(CLIENT, VIP)            # an FTP session left open: the module is in use
        try:
            session.settimeout(30)
            session.connect((VIP, 21))
            assert session.recv(200).startswith(b"220"), "no FTP banner"
            before = lab.ipvsadm("-Sn").stdout
            cp = lab.apply(config(ftp_service(), ftp_service("ftp-alt", port=2121),
                                  ftp_service("ftp-3", port=3021)), expect=1)
            assert "in use" in cp.stdout + cp.stderr, cp.stdout + cp.stderr
            assert "then apply again" in cp.stdout + cp.stderr
            assert ip_vs_ftp_ports() == "21,2121"
            assert lab.ipvsadm("-Sn").stdout == before          # nothing else was changed
        finally:
            session.close()


DSR_CLIENTS = [f"10.99.1.{i}" for i in range(10, 16)]     # persistence pins each to one server


def download_from(src: str, way: str) -> str:
    opts = ["--ftp-port", src] if way == "active" else FTP_WAYS[way]
    cp = curl_ftp(CLIENT, f"ftp://{VIP}/file.txt", "--interface", src, *opts)
    assert cp.returncode == 0, f"curl {way} from {src}: rc {cp.returncode}: {cp.stderr}"
    return cp.stdout.strip()


@pytest.mark.parametrize("mode", ["l2-dsr", "l3-dsr"])
class TestFtpDsr:
    """A persistent fwmark service over the control port, the active data port and the
    servers' passive range: every data connection lands on its control's server, and
    the servers answer the client directly (IPVS sees nothing come back)."""

    @pytest.fixture(autouse=True)
    def applied(self, lab: Lab, ftp_servers, mode) -> Iterator[None]:
        lab.reset_lb()
        lab.prepare_dsr(mode)
        run(["ip", "-n", CLIENT, "-batch", "-"],
            input="".join(f"addr add {a}/24 dev eth0\n" for a in DSR_CLIENTS))
        try:
            lab.apply(config(service("ftp", port=21, server_port=None, nat_mode=mode, scheduler="rr",
                                     application="ftp", passive_ports=f"{PASSIVE[0]}-{PASSIVE[1]}")),
                      expect=0)
            yield
        finally:
            run(["ip", "-n", CLIENT, "-batch", "-"], check=False,
                input="".join(f"addr del {a}/24 dev eth0\n" for a in DSR_CLIENTS))
            lab.unprepare_dsr(mode)

    def test_every_way_stays_on_the_clients_server_and_clients_spread(self, mode) -> None:
        server_of = {}
        for src in DSR_CLIENTS:
            got = {way: download_from(src, way) for way in FTP_WAYS}
            assert len(set(got.values())) == 1 and got["pasv"] in SERVERS, (src, got)
            server_of[src] = got["pasv"]
        assert Counter(server_of.values()) == {name: 2 for name in SERVERS}, server_of
        stats = wait_for(lambda: next((v for k, v in ipvs_stats().items() if k.startswith("FWM")), None),
                         what="the fwmark service's counters")
        assert stats.outpkts == 0, stats          # DSR: no answer came back through IPVS

    def test_uploads(self, ftp_servers, tmp_path, mode) -> None:
        for way in ("epsv", "active"):
            src = tmp_path / f"dsr-{mode}-{way}.txt"
            src.write_text("x\n")
            opts = ["--ftp-port", DSR_CLIENTS[0]] if way == "active" else []
            cp = curl_ftp(CLIENT, f"ftp://{VIP}/upload/{src.name}", "-T", str(src),
                          "--interface", DSR_CLIENTS[0], *opts)
            assert cp.returncode == 0, cp.stderr
        landed = [n for n, s in ftp_servers.items() if any(u.startswith(f"dsr-{mode}") for u in s.uploads())]
        assert len(landed) == 1, landed           # one client: one server (persistence)


def _connects(server: FtpServer) -> list[str]:
    """vsftpd's log lines of new control connections ('CONNECT: Client "1.2.3.4"')."""
    if not server.log.exists():
        return []
    return [line.replace('"', " ").strip() for line in server.log.read_text().splitlines()
            if "CONNECT: Client" in line]


# -- TFTP -------------------------------------------------------------------------------------

TFTP_BOTH_NAT_PORT = 6969
TFTP_LAN_TO_LAN_PORT = 6970


@pytest.fixture(scope="module")
def tftp_servers(lab: Lab) -> Iterator[dict[str, Path]]:
    dirs, procs = {}, []
    for name, addr in SERVERS.items():
        d = lab.dir / f"tftp-{name}"
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o777)
        (d / "boot.txt").write_text(f"{name}\n")
        dirs[name] = d
        procs.append(start_tftpd(name, addr, d, writable=True))
    yield dirs
    for proc in procs:
        stop_tftpd(proc)


class TestTftp:
    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def applied(cls, lab: Lab, tftp_servers) -> None:
        lab.reset_lb()
        tftp = dict(protocol="udp", server_port=69, application="tftp")
        lab.apply(config(service("tftp", port=69, **tftp),
                         service("tftp-bnat", port=TFTP_BOTH_NAT_PORT, nat_mode="both-nat",
                                 snat_ip=LB_LAN_IP, **tftp),
                         service("tftp-l2l", port=TFTP_LAN_TO_LAN_PORT, nat_mode="lan-to-lan",
                                 local_networks=[LAN_NET], **tftp)), expect=0)

    @pytest.mark.parametrize("client", [CLIENT, LAN_CLIENT])
    def test_lan_to_lan_every_client_gets_its_answers_from_the_vip(self, client) -> None:
        got = Counter()
        for _ in range(3):
            content, (src, _sport) = tftp_get(VIP, "boot.txt", ns=client, port=TFTP_LAN_TO_LAN_PORT,
                                              timeout=10)
            assert src == VIP
            got[content.decode().strip()] += 1
        assert got == {name: 1 for name in SERVERS}, got

    @pytest.mark.parametrize("port", [69, TFTP_BOTH_NAT_PORT])
    def test_a_strict_client_gets_every_answer_from_the_vip(self, port) -> None:
        """A PXE ROM drops an answer from any other address than the one it asked."""
        got = []
        for _ in range(3):
            content, (src, _sport) = tftp_get(VIP, "boot.txt", ns=CLIENT, port=port, timeout=10)
            assert src == VIP
            got.append(content.decode().strip())
        assert Counter(got) == {name: 1 for name in SERVERS}, got

    @pytest.mark.parametrize("port", [69, TFTP_BOTH_NAT_PORT])
    def test_the_stock_tftp_client_downloads(self, port) -> None:
        assert tftp_cli_get(CLIENT, VIP, "boot.txt", port=port).decode().strip() in SERVERS

    @pytest.mark.parametrize("port", [69, TFTP_BOTH_NAT_PORT])
    def test_uploads_land_on_a_server(self, tftp_servers, port) -> None:
        name = f"up-{port}.bin"
        src, _ = tftp_put(VIP, name, b"x" * 1300, ns=CLIENT, port=port, timeout=10)
        assert src == VIP
        landed = [n for n, d in tftp_servers.items() if (d / name).exists()]
        assert len(landed) == 1 and (tftp_servers[landed[0]] / name).read_bytes() == b"x" * 1300

    def test_the_helper_follows_the_transfers(self) -> None:
        """The LB's conntrack saw the helper on the requests and the answers as expected flows."""
        table = run(["conntrack", "-L", "-p", "udp"], ns=LB, check=False).stdout
        assert "helper=tftp" in table, table


# -- H.323 ------------------------------------------------------------------------------------

H245_PORT = 5000


@pytest.fixture(scope="module")
def h323_endpoints(lab: Lab) -> Iterator[None]:
    """A called endpoint on every real server: Q.931 on 1720 answers CONNECT with its H.245
    address (its own address, port 5000); H.245 answers with its name and the peer it saw.
    (Debian packages no H.323 endpoint: apps_h323.h323_server speaks just enough of it.)"""
    procs = [subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-S", str(HERE / "apps_h323.py"),
                               "h323-server", addr, name], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
             for name, addr in SERVERS.items()]
    for name, addr in SERVERS.items():
        wait_for(lambda: run(["ss", "-Hltn", f"src {addr}:1720"], ns=name).stdout.strip(),
                 what=f"the H.323 endpoint on {name}")
    yield
    for p in procs:
        p.terminate()
        p.wait(timeout=30)


class TestH323BothNat:
    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def applied(cls, lab: Lab, h323_endpoints) -> None:
        lab.reset_lb()
        lab.apply(config(service("h323", port=1720, server_port=1720, application="h323",
                                 nat_mode="both-nat", snat_ip=LB_LAN_IP)), expect=0)

    def test_calls_spread_and_h245_follows_through_the_vip_to_the_same_server(self) -> None:
        """The server announces its own address for H.245; the LB's Q.931 helper rewrites it
        to the VIP, and H.245 to the VIP reaches the server of the call, which sees snat_ip."""
        servers = []
        for _ in range(3):
            call = h323_call(VIP, ns=CLIENT, timeout=20)
            assert call["error"] is None, call
            assert call["h245"][0] == VIP, call                  # not the real server's address
            name, peer = call["h245_banner"].split()[1:3]
            assert peer == f"peer={LB_LAN_IP}", call
            servers.append(name)
        assert Counter(servers) == {name: 1 for name in SERVERS}, servers

    def test_the_helper_follows_the_call(self) -> None:
        table = run(["conntrack", "-L", "-p", "tcp"], ns=LB, check=False).stdout
        assert "helper=Q.931" in table and "helper=H.245" in table, table


# -- IPv6 -------------------------------------------------------------------------------------

V6_FTP_WAYS = {"epsv": [], "active": ["--ftp-port", CLIENT_IP6]}    # PASV carries IPv4 only


@pytest.fixture(scope="module")
def v6_servers(lab: Lab, tftp_servers) -> Iterator[dict[str, FtpServer]]:
    """IPv6-only vsftpd (one family per instance) and tftpd-hpa beside the IPv4 ones."""
    ftp = {name: start_vsftpd(lab, name, name, PASSIVE, listen_address=addr)
           for name, addr in SERVERS6.items()}
    tftp = [start_tftpd(name, addr, tftp_servers[name]) for name, addr in SERVERS6.items()]
    yield ftp
    for proc in tftp:
        stop_tftpd(proc)
    for server in ftp.values():
        server.stop()


class TestApplicationsIPv6:
    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def applied(cls, lab: Lab, v6_servers) -> None:
        unload_ip_vs_ftp(lab)
        lab.apply(config(ftp_service("ftp6", vip=VIP6),
                         ftp_service("ftp6-bnat", vip=VIP6, port=BOTH_NAT_PORT, nat_mode="both-nat",
                                     snat_ip=LB_LAN_IP6),
                         service("tftp6", vip=VIP6, port=69, protocol="udp", server_port=69,
                                 application="tftp")), expect=0)

    @pytest.mark.parametrize("port, peer", [(21, CLIENT_IP6), (BOTH_NAT_PORT, LB_LAN_IP6)])
    @pytest.mark.parametrize("way", list(V6_FTP_WAYS))
    def test_ftp_every_way_spreads_and_servers_see_the_right_peer(self, v6_servers, way, port,
                                                                  peer) -> None:
        before = {n: len(_connects(s)) for n, s in v6_servers.items()}
        got = Counter()
        for _ in range(3):
            cp = curl_ftp(CLIENT, f"ftp://[{VIP6}]:{port}/file.txt", "-g", *V6_FTP_WAYS[way])
            assert cp.returncode == 0, f"curl {way} [{VIP6}]:{port}: rc {cp.returncode}: {cp.stderr}"
            got[cp.stdout.strip()] += 1
        assert got == {name: 1 for name in SERVERS}, got
        peers = {line.split()[-1] for n, s in v6_servers.items() for line in _connects(s)[before[n]:]}
        assert peers == {peer}, peers

    def test_tftp_a_strict_client_gets_every_answer_from_the_vip(self) -> None:
        got = Counter()
        for _ in range(3):
            content, (src, _sport) = tftp_get(VIP6, "boot.txt", ns=CLIENT, timeout=10)
            assert src == VIP6
            got[content.decode().strip()] += 1
        assert got == {name: 1 for name in SERVERS}, got


# -- bad input --------------------------------------------------------------------------------

BAD_APPLICATIONS = f"""\
version: 1
services:
  - {{name: a, vip: {VIP}, port: 21, protocol: udp, application: ftp}}
  - {{name: b, vip: {VIP}, port: 69, protocol: tcp, application: tftp}}
  - {{name: c, vip: {VIP}, port: 70, protocol: udp, application: tftp, nat_mode: l2-dsr}}
  - {{name: d, vip: {VIP}, port: 1720, application: h323}}
  - {{name: e, vip: {VIP}, port: 2121, application: ftp, passive_ports: "3000-4000"}}
"""


def test_applications_a_mode_cannot_carry_exit_1_with_file_line_and_touch_nothing(lab: Lab) -> None:
    lab.reset_lb()
    lab.apply(config(service("web", scheduler="rr")), expect=0)
    before = (lab.ipvsadm("-Sn").stdout, lab.nft("list", "ruleset").stdout)
    modules = {line.split()[0] for line in Path("/proc/modules").read_text().splitlines()}
    bad = lab.apply(BAD_APPLICATIONS, expect=1)
    path = bad.config_path
    got = [line.split(": ", 2)[:2] for line in bad.stderr.splitlines()
           if line.startswith(f"{path}:") and ": $." in line]
    assert got == [[f"{path}:3", "$.services[0].application"], [f"{path}:4", "$.services[1].application"],
                   [f"{path}:5", "$.services[2].application"], [f"{path}:6", "$.services[3].application"],
                   [f"{path}:7", "$.services[4].passive_ports"]], bad.stderr
    assert "application h323 cannot work in nat_mode dest-nat" in bad.stderr
    assert bad.stderr.rstrip().endswith("5 problem(s); nothing was changed")
    assert (lab.ipvsadm("-Sn").stdout, lab.nft("list", "ruleset").stdout) == before
    assert {line.split()[0] for line in Path("/proc/modules").read_text().splitlines()} == modules
