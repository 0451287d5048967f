"""backend/modules.py against a made-up /sys/module, module index and modprobe."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from pask_ipvs.backend.base import BackendError
from pask_ipvs.backend.modules import LinuxModules
from pask_ipvs.objects import KernelModule


@pytest.fixture
def kernel(tmp_path):
    """/sys/module with ip_vs_ftp loaded (ports=21; one parameter that cannot be read), an index
    that knows nf_conntrack_tftp (built in) and nf_nat_tftp (loadable)."""
    sysmod = tmp_path / "sys_module"
    params = sysmod / "ip_vs_ftp" / "parameters"
    params.mkdir(parents=True)
    (params / "ports").write_text("21\n")
    (params / "unreadable").mkdir()                             # an OSError for any reader
    (sysmod / "nf_nat").mkdir()                                 # loaded, no parameters
    mods = tmp_path / "lib_modules"
    mods.mkdir()
    (mods / "modules.builtin").write_text("kernel/net/netfilter/nf_conntrack_tftp.ko\n")
    (mods / "modules.dep").write_text("kernel/net/netfilter/nf_nat_tftp.ko.xz: kernel/net/netfilter/nf_nat.ko.xz\n")
    return LinuxModules(sys_module_dir=str(sysmod), modules_dir=str(mods))


def test_observe_reads_the_loaded_modules_parameters(kernel):
    seen = kernel.observe(["ip_vs_ftp", "nf_nat", "nf_nat_tftp"])
    assert seen == {"ip_vs_ftp": KernelModule("ip_vs_ftp", (("ports", "21"),)),
                    "nf_nat": KernelModule("nf_nat")}


def test_missing_is_what_is_neither_loaded_nor_in_the_index(kernel):
    modules = kernel
    assert modules.missing(["ip_vs_ftp", "nf_conntrack_tftp", "nf_nat_tftp", "nf_nat_h323"]) == ["nf_nat_h323"]


@pytest.fixture
def modprobe(tmp_path, monkeypatch):
    """A stand-in modprobe first on PATH: logs its argv; fails as the kernel would for
    ``-r`` of a module named in $IN_USE."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "modprobe.log"
    script = bin_dir / "modprobe"
    script.write_text(f"""#!/bin/sh
echo "$*" >> {log}
if [ "$1" = "-r" ] && [ "$2" = "$IN_USE" ]; then
    echo "modprobe: FATAL: Module $2 is in use." >&2; exit 1
fi
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


def test_load_passes_the_parameters_and_reload_unloads_first(kernel, modprobe):
    modules = kernel
    want = KernelModule("ip_vs_ftp", (("ports", "21,2121"),))
    modules.load(want)
    modules.reload(want)
    assert modprobe.read_text().splitlines() == [
        "ip_vs_ftp ports=21,2121", "-r ip_vs_ftp", "ip_vs_ftp ports=21,2121"]


def test_a_module_in_use_is_ebusy_and_not_loaded_again(kernel, modprobe, monkeypatch):
    modules = kernel
    monkeypatch.setenv("IN_USE", "ip_vs_ftp")
    with pytest.raises(BackendError) as info:
        modules.reload(KernelModule("ip_vs_ftp", (("ports", "21,2121"),)))
    assert info.value.errno == errno.EBUSY and "is in use" in str(info.value)
    assert modprobe.read_text().splitlines() == ["-r ip_vs_ftp"]


def test_no_modprobe_is_a_clear_error(kernel, monkeypatch, tmp_path):
    modules = kernel
    monkeypatch.setattr("pask_ipvs.backend.modules._modprobe_path", lambda: None)
    with pytest.raises(BackendError) as info:
        modules.load(KernelModule("nf_nat_tftp"))
    assert "modprobe not found (install kmod)" in str(info.value)
