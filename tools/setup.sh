#!/bin/bash
# tools/setup.sh — make a fresh Debian 12 machine ready to build, test and demo
# pask-ipvs.  Run as root from anywhere; safe to run again (fast when done).
#
#   1. Debian packages: QEMU + Debian's kernel (the test VM, since most CI
#      kernels lack IPVS), the kernel tools pask drives, and Python's venv.
#   2. A virtualenv at .venv in the repo with pask-ipvs installed editable (a plain .pth path), plus
#      its test extras (pytest, hypothesis, ansible-core, ansible-runner, ansible-lint).  The test VM sees this machine's filesystem, so the same
#      .venv runs inside it.
#
# Env: PASK_PYTHON  interpreter for the venv (default /usr/bin/python3, Debian's,
#                   which python3-venv/python3-dev belong to)
# Braced: bash reads the whole script before running it, so editing this file
# never derails a run in progress.
{
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
say() { echo "setup: $*"; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }

PACKAGES=(qemu-system-x86 linux-image-amd64 busybox-static cpio xz-utils zstd kmod file
          ipvsadm nftables libnftables1 iproute2 curl procps python3-venv python3-dev
          keepalived conntrackd systemd bird2
          vsftpd tftpd-hpa tftp-hpa conntrack)   # application tests: real FTP/TFTP servers and clients

# ---- 1. Debian packages ------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    say "Debian packages: all ${#PACKAGES[@]} installed"
else
    [ "$(id -u)" = 0 ] || die "packages missing (${missing[*]}); run this script as root"
    export DEBIAN_FRONTEND=noninteractive
    say "missing: ${missing[*]}"
    say "apt-get update"
    apt-get update
    say "apt-get install -y --no-install-recommends ${PACKAGES[*]}"
    # Daemons installed for the tests (vsftpd, tftpd-hpa, keepalived, bird2) must not start on
    # this host: the tests start them in their own network namespaces.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1; fi
    apt-get install -y --no-install-recommends "${PACKAGES[@]}" </dev/null
    if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi
fi
ls /lib/modules/*/kernel/net/netfilter/ipvs/ip_vs.ko* >/dev/null 2>&1 \
    || die "no kernel modules with IPVS under /lib/modules (linux-image-amd64 did not install?)"

# ---- 2. virtualenv with pask-ipvs (editable) ---------------------------------
PY=${PASK_PYTHON:-/usr/bin/python3}
[ -x "$PY" ] || PY=$(command -v python3) || die "no python3"
STAMP=.venv/.pask-setup
want="$(sha256sum pyproject.toml | cut -c1-16) $ROOT $("$PY" -c 'import sys; print(sys.version.split()[0])') compat"
if [ -x .venv/bin/python ] && .venv/bin/python -c '' 2>/dev/null \
   && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x .venv/bin/pask-apply ]; then
    say "virtualenv: .venv is up to date ($(.venv/bin/python -V 2>&1); pyproject unchanged)"
else
    if ! { [ -x .venv/bin/python ] && .venv/bin/python -c '' 2>/dev/null; }; then
        say "$PY -m venv .venv"
        rm -rf .venv
        "$PY" -m venv .venv
    fi
    # editable_mode=compat: a plain path in a .pth file. The default mode installs an
    # import-hook finder that every pask process imports first (0.2 s under emulation).
    say ".venv/bin/pip install -e '.[test]' (editable_mode=compat)"
    .venv/bin/pip install --disable-pip-version-check -q -e '.[test]' --config-settings editable_mode=compat
    echo "$want" > "$STAMP"
fi
say "ready: .venv/bin/python ($(.venv/bin/python -V 2>&1)), entry points in .venv/bin: $(cd .venv/bin && ls pask* 2>/dev/null | tr '\n' ' ')"
exit
}
