"""Stock application servers for the lab's real servers (plain Python, no pytest).

``start_vsftpd(lab, "rs1", "rs1", (30000, 30009))`` runs vsftpd in namespace
rs1 with anonymous download (``/NAME.txt`` and ``/file.txt``, whose content
is the server name) and anonymous upload into ``/upload/``; the returned
handle's ``stop()`` ends it; ``curl_ftp`` runs the stock client in a namespace.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VSFTPD = "/usr/sbin/vsftpd"


@dataclass
class FtpServer:
    ns: str
    name: str
    dir: Path
    proc: subprocess.Popen

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def upload_dir(self) -> Path:
        return self.root / "upload"

    @property
    def log(self) -> Path:
        return self.dir / "vsftpd.log"

    def uploads(self) -> list[str]:
        return sorted(p.name for p in self.upload_dir.iterdir()) if self.upload_dir.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _lab_dir(lab: Any) -> Path:
    return Path(getattr(lab, "dir", None) or os.environ.get("PASK_LAB_DIR", "/run/pask-lab"))


def vsftpd_conf(name: str, d: Path, pasv_range: tuple[int, int] | None, *, port: int = 21,
                listen_address: str | None = None, pasv_address: str | None = None,
                extra: dict[str, str] | None = None) -> str:
    opts = {
        "listen": "YES", "listen_ipv6": "NO", "background": "NO", "listen_port": str(port),
        "anonymous_enable": "YES", "local_enable": "NO", "no_anon_password": "YES",
        "anon_root": str(d / "root"), "write_enable": "YES", "anon_upload_enable": "YES",
        "anon_mkdir_write_enable": "NO", "anon_other_write_enable": "NO", "anon_umask": "022",
        "secure_chroot_dir": str(d / "empty"), "seccomp_sandbox": "NO",
        "connect_from_port_20": "YES", "port_enable": "YES", "pasv_enable": "YES",
        "xferlog_enable": "YES", "vsftpd_log_file": str(d / "vsftpd.log"), "dual_log_enable": "YES",
        "log_ftp_protocol": "YES", "syslog_enable": "NO", "use_localtime": "NO",
        "ftpd_banner": f"pask lab ftp {name}", "max_per_ip": "0", "max_clients": "0",
    }
    if pasv_range:
        opts["pasv_min_port"], opts["pasv_max_port"] = str(pasv_range[0]), str(pasv_range[1])
    if listen_address:
        opts["listen_address"] = listen_address
    if pasv_address:
        opts["pasv_address"] = pasv_address
    opts.update(extra or {})
    return "".join(f"{k}={v}\n" for k, v in opts.items())


def start_vsftpd(lab: Any, ns: str, name: str, pasv_range: tuple[int, int] | None = (30000, 30009), *,
                 port: int = 21, listen_address: str | None = None, pasv_address: str | None = None,
                 extra: dict[str, str] | None = None, timeout: float = 30) -> FtpServer:
    """vsftpd in namespace ``ns``: anonymous, files name ``name``, uploads to /upload/.

    An IPv6 ``listen_address`` makes an IPv6-only instance (vsftpd listens on one family
    per instance), which may run beside an IPv4 one. ``extra`` adds/overrides vsftpd.conf
    options (``pasv_promiscuous``...). Waits until the control port listens; the
    handle's ``stop()`` ends it.
    """
    v6 = bool(listen_address and ":" in listen_address)
    if v6:
        extra = {"listen": "NO", "listen_ipv6": "YES", "listen_address6": listen_address or "",
                 **(extra or {})}
        listen_address = None
    d = _lab_dir(lab) / (f"ftp6-{name}" if v6 else f"ftp-{name}")
    shutil.rmtree(d, ignore_errors=True)
    (d / "empty").mkdir(parents=True)
    root = d / "root"
    root.mkdir()
    for f in ("file.txt", f"{name}.txt"):
        (root / f).write_text(f"{name}\n")
    up = root / "upload"
    up.mkdir()
    ftp = pwd.getpwnam("ftp")
    os.chown(up, ftp.pw_uid, ftp.pw_gid)          # anon_root itself must stay root-owned, 0755
    for p in (d, d / "empty", root):
        p.chmod(0o755)
    conf = d / "vsftpd.conf"
    conf.write_text(vsftpd_conf(name, d, pasv_range, port=port, listen_address=listen_address,
                                pasv_address=pasv_address, extra=extra))
    conf.chmod(0o600)                              # vsftpd wants its config owned by root
    out = open(d / "stderr", "ab")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, VSFTPD, str(conf)], stdin=subprocess.DEVNULL,
                            stdout=out, stderr=out, start_new_session=True)
    out.close()
    server = FtpServer(ns, name, d, proc)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"vsftpd {name} exited {proc.returncode}: {(d / 'stderr').read_text()}")
        ss = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htln", f"sport = :{port}"],
                            capture_output=True, text=True)
        if ss.stdout.strip():
            return server
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"vsftpd {name} not listening on {port} after {timeout}s")
        time.sleep(0.1)


def start_vsftpd_all(lab: Any, servers: dict[str, str] | None = None, pasv_range: tuple[int, int] | None = (30000, 30009),
                     **kw: Any) -> dict[str, FtpServer]:
    """One vsftpd per lab real server (namespace = server name)."""
    if servers is None:
        from lab import SERVERS   # type: ignore[import-not-found]
        servers = SERVERS
    return {name: start_vsftpd(lab, name, name, pasv_range, **kw) for name in servers}


def curl_ftp(ns: str, url: str, *args: str, timeout: int = 30) -> subprocess.CompletedProcess:
    """Real curl in ``ns``: ``curl_ftp("c1", "ftp://10.99.100.1/file.txt", "--disable-epsv")``."""
    return subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", "--max-time", str(timeout), *args, url],
                          capture_output=True, text=True, timeout=timeout + 30)
