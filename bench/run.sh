#!/bin/bash
# bench/run.sh [--quick] [--no-profile] — pask-apply at scale vs keepalived and
# ipvsadm-restore, in the IPVS test VM, every cold apply on a FRESH boot.
#
#   bench/run.sh            full table: 1024 x 32 (pask, keepalived, ipvsadm-restore, pask after a reboot),
#                           scaling at 256 and 4096 x 32, and a profile (8 boots, ~8 min
#                           on an idle 2-core machine; much longer when other VMs run)
#   bench/run.sh --quick    1024 x 32 only, each tool once (3 boots)
#   bench/run.sh --no-profile   the full table without the two profiling boots
#   bench/run.sh --repeat N     the 1024 x 32 boots of pask-apply and keepalived N times,
#                           alternating; the table takes each one's best run (a shared
#                           machine slows some boots 2x) and lists every run
#
# Why one boot per cold measurement: a kernel that has just cleared a big IPVS
# table refills it ~3x slower for minutes (docs/performance.md), so nothing is
# ever flushed and re-measured in the same boot.
#
# Results: bench/results/RUN_ID/ (git-ignored; bench/results/latest points at
# the newest), written back from the VM through IPVSVM_RWDIR; the markdown
# table is printed at the end (bench/report.py makes it).
# Env: BENCH_IDLE_WAIT  seconds to wait before each boot for other VMs on this
#                       machine to finish (default 120; they skew timings)
#      IPVSVM_MEM       guest RAM (default here 2048M: 4096 x 32 needs room)
#      other IPVSVM_* knobs: see integration/vm-run
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
say() { echo "bench: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

QUICK=0 PROFILE=1 REPEAT=1 want_n=0
for a in "$@"; do
    if [ $want_n = 1 ]; then REPEAT=$a; want_n=0; continue; fi
    case $a in
        --quick) QUICK=1; PROFILE=0 ;;
        --no-profile) PROFILE=0 ;;
        --repeat) want_n=1 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) die "unknown option $a (see --help)" ;;
    esac
done
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "--repeat wants a count of 1 or more"
[ "$(id -u)" = 0 ] || die "run as root (the VM and IPVS need it)"

if [ -x integration/vm-run ]; then VMRUN=$ROOT/integration/vm-run
else die "no VM runner: integration/vm-run is missing"; fi
if [ -x .venv/bin/python ]; then PY=$ROOT/.venv/bin/python
else PY=/root/.pyenv/versions/3.11.7/bin/python; fi
"$PY" -c 'import pask_ipvs, yaml' 2>/dev/null || die "$PY cannot import pask_ipvs (run tools/setup.sh)"

RUN_ID=$(date +%Y%m%d-%H%M%S)$([ $QUICK = 1 ] && echo -quick)
OUT=$ROOT/bench/results/$RUN_ID
mkdir -p "$OUT" || die "cannot create $OUT"
ln -sfn "$RUN_ID" "$ROOT/bench/results/latest"
export IPVSVM_MEM=${IPVSVM_MEM:-2048M}
export IPVSVM_TIMEOUT=${IPVSVM_TIMEOUT:-1800}
export IPVSVM_VERBOSE=1   # vm-run prints the guest's start/end uptime: a cross-check of the guest clock
IDLE_WAIT=${BENCH_IDLE_WAIT:-120}
T0=$(date +%s)
say "results in $OUT (runner $VMRUN, python $PY)"

# ---- inputs, made on the host ---------------------------------------------------
SIZES="1024"; [ $QUICK = 1 ] || SIZES="256 1024 4096"
for n in $SIZES; do
    cfg=$OUT/scale-$n.yaml
    if [ "$n" = 1024 ] && [ -s examples/scale-1024.yaml ]; then cp examples/scale-1024.yaml "$cfg"
    else "$PY" examples/gen_scale.py --services "$n" --servers 32 -o "$cfg" || die "gen_scale.py failed"; fi
    "$PY" bench/peers.py gen "$cfg" --out-dir "$OUT" --name "scale-$n" $([ "$n" = 1024 ] || echo --no-change) \
        >/dev/null || die "peers.py gen failed for $n"
done
say "inputs ready ($(( $(date +%s) - T0 )) s)"

# ---- one fresh VM per cold measurement ----------------------------------------------
other_vms() { local n; n=$(pgrep -fc '^qemu-system-x86_64 .*-nodefaults' 2>/dev/null); echo "${n:-0}"; }
BOOTS=()
boot() {   # boot NAME 'command run in the VM, from the repo root'
    local name=$1 cmd=$2 waited=0 n load t rc
    while [ "$(other_vms)" -gt 0 ] && [ $waited -lt "$IDLE_WAIT" ]; do sleep 5; waited=$((waited + 5)); done
    n=$(other_vms); load=$(cut -d' ' -f1 /proc/loadavg)
    [ "$n" -gt 0 ] && say "warning: $n other VM(s) running (load $load): $name's timings will be inflated"
    say "boot $name ..."
    t=$(date +%s)
    IPVSVM_RWDIR=$OUT "$VMRUN" "cd $(printf %q "$ROOT") && $cmd" >"$OUT/$name.log" 2>&1
    rc=$?
    t=$(( $(date +%s) - t ))
    say "boot $name: rc $rc in ${t}s (log $OUT/$name.log)"
    [ $rc = 0 ] || tail -n 15 "$OUT/$name.log" >&2
    BOOTS+=("{\"name\": \"$name\", \"rc\": $rc, \"wall_s\": $t, \"other_vms_at_start\": $n, \"load_at_start\": $load, \"waited_s\": $waited}")
    local IFS=,; echo "[${BOOTS[*]}]" > "$OUT/boots.json"
}

VPY=$PY   # the VM sees this machine's filesystem: the same interpreter, by full path
M=$OUT/scale-1024
for i in $(seq 1 "$REPEAT"); do
    r=$([ "$i" = 1 ] || echo ".r$i")     # repeats: pask-1024.r2.json, keepalived-1024.r2.json, ...
    boot pask-1024$r "$VPY bench/scale.py run $M.yaml --meta $M.meta.json --changed $M.changed.yaml $([ "$i" = 1 ] && echo "--save-state $OUT/state-1024") --out $OUT/pask-1024$r.json"
    # keepalived, then (its table left in place: it is killed, not stopped) pask's no-op in the same boot
    boot keepalived-1024$r "$VPY bench/peers.py keepalived --dir $OUT --name scale-1024 --out $OUT/keepalived-1024$r.json && $VPY bench/scale.py noop $M.changed.yaml --out $OUT/pask-noop-after-keepalived$r.json"
done
boot restore-1024 "$VPY bench/peers.py restore --dir $OUT --name scale-1024 --out $OUT/restore-1024.json"
if [ $QUICK = 0 ]; then
    # a reboot: empty kernel, pask's state file and config cache kept from the run above
    boot pask-1024-reboot "$VPY bench/scale.py run $M.yaml --meta $M.meta.json --cold-only --state-from $OUT/state-1024 --out $OUT/pask-1024-reboot.json"
    for n in 256 4096; do
        M=$OUT/scale-$n
        boot pask-$n "$VPY bench/scale.py run $M.yaml --meta $M.meta.json --cold-only --out $OUT/pask-$n.json"
    done
fi
if [ $PROFILE = 1 ]; then
    boot profile-stages "$VPY bench/scale.py profile $OUT/scale-1024.yaml --out-dir $OUT --mode stages --changed $OUT/scale-1024.changed.yaml && $VPY bench/scale.py floor $OUT/scale-1024.yaml --out $OUT/floor-1024.json"
    boot profile-cprofile "$VPY bench/scale.py profile $OUT/scale-1024.yaml --out-dir $OUT --mode cprofile"
fi

say "done in $(( $(date +%s) - T0 )) s"
"$PY" bench/report.py "$OUT" $([ $PROFILE = 1 ] && echo --profile) | tee "$OUT/table.md"
