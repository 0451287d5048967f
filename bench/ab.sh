#!/bin/bash
# bench/ab.sh REV [ROUNDS] — pask-apply at 1024 x 32, commit REV against this checkout,
# side by side: one fresh VM boot per run, alternating (REV, this, REV, this, ...), so
# that both see the same machine at the same time (these machines are noisy).
#
#   bench/ab.sh 8e2959c        two rounds (4 boots, ~4 min on an idle 2-core machine)
#   bench/ab.sh HEAD~1 3       three rounds
#
# REV is checked out as a git worktree beside this one (../pask-ab-REV), with its own
# .venv (tools/setup.sh there); it is removed afterwards. Each boot runs
# `bench/scale.py run` of its own tree (cold apply, no-op apply, one weight changed,
# pask-healthd's reload) on the same inputs. Results: bench/results/ab-RUN_ID/ and a
# table of the seconds with the ratios this/REV per round. Run as root.
{
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
die() { echo "bench/ab.sh: $*" >&2; exit 1; }
[ $# -ge 1 ] || { sed -n '2,13p' "$0"; exit 2; }
REV=$1 ROUNDS=${2:-2}
[ "$(id -u)" = 0 ] || die "run as root (the VM and IPVS need it)"
[ -x .venv/bin/python ] || die "no .venv here: run tools/setup.sh"
SHA=$(git rev-parse --short "$REV^{commit}") || die "unknown revision $REV"
OTHER=$(dirname "$ROOT")/pask-ab-$SHA
OUT=$ROOT/bench/results/ab-$(date +%Y%m%d-%H%M%S)-$SHA
mkdir -p "$OUT" || die "cannot create $OUT"
cleanup() { git worktree remove --force "$OTHER" >/dev/null 2>&1; }
trap cleanup EXIT
git worktree add -f --detach "$OTHER" "$SHA" >/dev/null 2>&1 || die "git worktree add $OTHER failed"
(cd "$OTHER" && bash tools/setup.sh >"$OUT/setup-$SHA.log" 2>&1) || die "tools/setup.sh failed in $OTHER (see $OUT/setup-$SHA.log)"

cp examples/scale-1024.yaml "$OUT/scale-1024.yaml"
.venv/bin/python bench/peers.py gen "$OUT/scale-1024.yaml" --out-dir "$OUT" --name scale-1024 >/dev/null \
    || die "peers.py gen failed"
export IPVSVM_MEM=${IPVSVM_MEM:-2048M} IPVSVM_TIMEOUT=${IPVSVM_TIMEOUT:-1800}
M=$OUT/scale-1024
for round in $(seq "$ROUNDS"); do
    for side in rev this; do
        dir=$ROOT; [ $side = rev ] && dir=$OTHER
        t=$(date +%s)
        IPVSVM_RWDIR=$OUT integration/vm-run "cd $(printf %q "$dir") && .venv/bin/python bench/scale.py run $M.yaml --meta $M.meta.json --changed $M.changed.yaml --save-state $OUT/state-$side-$round --out $OUT/$side-$round.json" \
            >"$OUT/$side-$round.log" 2>&1 || die "boot $side $round failed (see $OUT/$side-$round.log)"
        echo "bench/ab.sh: boot $side round $round: $(( $(date +%s) - t )) s"
    done
done

.venv/bin/python - "$OUT" "$SHA" "$ROUNDS" <<'PY' | tee "$OUT/table.md"
import json, sys
out, sha, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
cols = [("cold", "s", "cold apply"), ("noop", "s", "no-op apply"), ("change", "s", "one weight changed"),
        ("healthd_reload", "reload_s", "pask-healthd reload")]
def read(side, r):
    d = json.load(open(f"{out}/{side}-{r}.json"))
    assert all(d[k].get("ok") for k, _, _ in cols), f"{side}-{r}: a run did not verify"
    return [d[k][f] for k, f, _ in cols]
print("| | " + " | ".join(c[2] for c in cols) + " |")
print("|---" * (len(cols) + 1) + "|")
ratios = []
for r in range(1, rounds + 1):
    a, b = read("rev", r), read("this", r)
    print(f"| {sha}, boot {r} | " + " | ".join(f"{x:.2f}" for x in a) + " |")
    print(f"| this tree, boot {r} | " + " | ".join(f"{x:.2f}" for x in b) + " |")
    ratios.append([y / x for x, y in zip(a, b)])
print("| this / " + sha + " | " + " | ".join(", ".join(f"{rr[i]:.2f}" for rr in ratios) for i in range(len(cols))) + " |")
PY
exit
}
