#!/bin/bash
# tools/demo.sh — see pask-ipvs balance real traffic, end to end.
#
# Builds the lab (a client, a load balancer, three web servers in network
# namespaces), runs `pask-apply examples/demo.yaml` on the load balancer
# (VIP 10.99.100.1:80, round robin, Dest NAT over 10.99.2.11-13:8080), shows
# `ipvsadm -Ln`, then curls the VIP from the client 9 times: each answer names
# the server that served it.  Runs in the test VM when this kernel has no IPVS
# (integration/vm-run), else right here: everything happens inside the lab's
# own namespaces, never in this machine's network.  Run as root.
# Braced: bash reads the whole script before running it, so editing this file
# never derails a run in progress.
{
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [ "${1:-}" != --inside ]; then
    [ "$(id -u)" = 0 ] || { echo "tools/demo.sh: run as root" >&2; exit 1; }
    tools/setup.sh
    if [ -e /proc/net/ip_vs ] || { modprobe ip_vs 2>/dev/null && [ -e /proc/net/ip_vs ]; }; then
        exec "$0" --inside
    fi
    echo "demo: this kernel has no IPVS: running the demo in the test VM (Debian's kernel under QEMU, ~1 min)"
    IPVSVM_TIMEOUT=${IPVSVM_TIMEOUT:-900} exec integration/vm-run -- "$0" --inside
fi

PY=$ROOT/.venv/bin/python
CONFIG=${PASK_DEMO_CONFIG:-examples/demo.yaml}
VIP=10.99.100.1
WORK=$(mktemp -d /tmp/pask-demo.XXXXXX)
show() { echo; echo "\$ $*"; "$@"; }
cleanup() { "$PY" integration/lab.py down; rm -rf "$WORK"; }
trap cleanup EXIT

echo; echo "== 1. the lab: client c1 -> load balancer lb -> real servers rs1..rs3 (network namespaces)"
"$PY" integration/lab.py up

echo; echo "== 2. pask-apply on the load balancer (namespace lb)"
show ip netns exec lb .venv/bin/pask-apply --state-file "$WORK/state.json" --health-file "$WORK/health.json" "$CONFIG"

echo; echo "== 3. what the kernel now holds"
show ip netns exec lb ipvsadm -Ln
show ip -n lb -br addr show dev pask0

echo; echo "== 4. nine requests from the client to http://$VIP/ (each answer: server, client address it saw)"
declare -A hits=()
for i in $(seq 9); do
    answer=$(ip netns exec c1 curl -sS --max-time 10 "http://$VIP/")
    printf '  request %d -> %s\n' "$i" "$answer"
    name=${answer%% *}
    hits[$name]=$(( ${hits[$name]:-0} + 1 ))
done
echo
printf '  spread:'; for n in $(printf '%s\n' "${!hits[@]}" | sort); do printf ' %s=%s' "$n" "${hits[$n]}"; done; echo
show ip netns exec lb ipvsadm -Ln     # InActConn: the finished connections each server took
if [ "${#hits[@]}" -ne 3 ]; then
    echo "demo: FAILED: expected all 3 servers to answer" >&2
    exit 1
fi
echo; echo "demo: OK: pask-ipvs spread the traffic over all three real servers."
exit
}
