#!/bin/bash
# tools/test.sh — the project's test command (the README's, and CI's via .ci/run).
#
#   1. tools/setup.sh        Debian packages + .venv (fast when already done)
#   2. lint                  ansible-lint (profile production, offline) on the pask.ipvs
#                            collection and the playbooks
#      sanity                ansible-test sanity on the collection (tools/ansible-sanity)
#   3. unit tests            .venv/bin/python -m pytest tests/, as the unprivileged user
#                            nobody: pure, fakes only, no root and no kernel
#   4. host tests            pytest integration/host/ as root: network namespaces and
#                            nftables of this kernel (no IPVS needed, so no VM)
#   5. integration tests     integration/run: real IPVS + real traffic, in one
#                            test VM when this kernel has no IPVS
#
# Run as root.  Exits non-zero if any stage fails (a stage that runs no test
# fails too) and ends with a summary.  Extra arguments go to both pytest runs
# (e.g. -x, -k expr).
# Braced: bash reads the whole script before running it, so editing this file
# never derails a run in progress.
{
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
T0=$(date +%s)
declare -a NAMES=() RCS=() SECS=() XMLS=()

stage() {   # stage NAME JUNIT_XML_OR_- CMD...
    local name=$1 xml=$2; shift 2
    echo
    echo "==== $name: $*"
    local t=$(date +%s)
    "$@"
    local rc=$?
    NAMES+=("$name"); RCS+=("$rc"); SECS+=("$(( $(date +%s) - t ))"); XMLS+=("$xml")
    return $rc
}

counts() {  # counts JUNIT_XML -> "tests failures errors skipped" (empty if unreadable)
    [ -s "$1" ] || return 0
    python3 - "$1" <<'PY' 2>/dev/null
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
tot = [sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")]
print(*tot)
PY
}

summary() {
    local passed=0 failed=0 skipped=0 status=0 i
    echo
    echo "==== summary ($(( $(date +%s) - T0 ))s)"
    for i in "${!NAMES[@]}"; do
        local rc=${RCS[$i]} word=ok detail=""
        [ "$rc" = 0 ] || { word=FAILED; status=1; }
        if [ "${XMLS[$i]}" != - ]; then
            read -r t f e s <<<"$(counts "${XMLS[$i]}")"
            if [ -n "${t:-}" ]; then
                passed=$((passed + t - f - e - s)); failed=$((failed + f + e)); skipped=$((skipped + s))
                detail=" ($((t - f - e - s)) passed, $((f + e)) failed, $s skipped)"
                [ "$t" -gt 0 ] || { detail=" (no tests ran)"; word=FAILED; status=1; }
            else
                detail=" (no test results)"; failed=$((failed + 1))
            fi
            [ "$rc" = 5 ] && detail=" (pytest collected no tests)"
        fi
        printf '  %-12s %-6s %4ss%s\n' "${NAMES[$i]}" "$word" "${SECS[$i]}" "$detail"
        t= f= e= s=
    done
    [ "$status" = 0 ] && echo "ALL PASSED" || echo "SOME STAGES FAILED"
    echo "tests: $passed passed, $failed failed, $skipped skipped"
    return $status
}

[ "$(id -u)" = 0 ] || { echo "tools/test.sh: run as root (the netns and kernel tests need it)" >&2; exit 1; }

if ! stage setup - tools/setup.sh; then summary; exit 1; fi
stage lint - env PATH="$ROOT/.venv/bin:$PATH" sh -c 'cd ansible && exec ansible-lint --offline --nocolor'
stage sanity - tools/ansible-sanity
# The unit tests run as nobody, to prove they need no privilege; their scratch files
# (JUnit XML, pytest's and hypothesis' temp data) go to a directory nobody owns.
unit_tests() {
    local tmp
    tmp=$(mktemp -d /tmp/pask-unit.XXXXXX) && chown 65534:65534 "$tmp" || return 1
    local as=(setpriv --reuid=65534 --regid=65534 --clear-groups
              env HOME="$tmp" TMPDIR="$tmp" HYPOTHESIS_STORAGE_DIRECTORY="$tmp/hypothesis")
    if ! "${as[@]}" test -r "$ROOT/pask_ipvs/__init__.py" -a -x "$ROOT/.venv/bin/python"; then
        echo "tools/test.sh: $ROOT is not readable by the user nobody: the unit tests run as root" >&2
        as=(env HYPOTHESIS_STORAGE_DIRECTORY="$tmp/hypothesis")
    fi
    "${as[@]}" .venv/bin/python -m pytest tests/ -p no:cacheprovider --junitxml="$tmp/junit.xml" "$@"
    local rc=$?
    cp "$tmp/junit.xml" build/unit/junit.xml 2>/dev/null
    rm -rf "$tmp"
    return $rc
}
mkdir -p build/unit build/host
rm -f build/unit/junit.xml build/host/junit.xml
stage unit build/unit/junit.xml unit_tests "$@"
stage host build/host/junit.xml .venv/bin/python -m pytest integration/host -p no:cacheprovider \
    --junitxml=build/host/junit.xml "$@"
stage integration "${PASK_RESULTS_DIR:-$ROOT/build/integration}/junit.xml" integration/run --durations=10 "$@"
summary
exit
}
