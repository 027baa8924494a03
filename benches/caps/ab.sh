#!/usr/bin/env bash
# Blade CPU per call of two (or more) sipblade binaries, taking turns:
# a one-core blade on CPU 0, `sipblade load` on CPU 1, and the blade's CPU
# from its threads' schedstat (nanoseconds on a CPU) around each load run.
# Registration is done before the measured run.
#
#   benches/caps/ab.sh RATE CALLS ROUNDS BINARY...
#   e.g. benches/caps/ab.sh 8000 40000 3 /tmp/old/sipblade target/release/sipblade
#
# Loopback only (127.0.0.48); every run is bounded by CALLS and a timeout.
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 RATE CALLS ROUNDS BINARY..." >&2; exit 2; }
rate=$1 calls=$2 rounds=$3
shift 3
addr=127.0.0.48:5060
work="$(mktemp -d)"
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$1" load agents --pairs 1000 --first 100000 >"$work/agents.toml"
cat >"$work/blade.toml" <<TOML
[blade]
id = "ab-blade"
domain = "cc.example"
sip = "$addr"
cores = 1
admin = "127.0.0.48:8060"
[agents]
file = "$work/agents.toml"
auth = false
TOML

cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%d\n", s}'; }
load() { # binary rate calls
    timeout 120 taskset -c 1 "$1" load run --blade "$addr" --callee-blade "$addr" \
        --first 100000 --pairs 1000 --rate "$2" --calls "$3" --json 2>/dev/null || true
}

for round in $(seq 1 "$rounds"); do
    for bin in "$@"; do
        taskset -c 0 "$bin" run --config "$work/blade.toml" >"$work/blade.log" 2>&1 &
        pid=$!
        sleep 1.5
        load "$bin" 100 1 >/dev/null # registers the agents
        before=$(cpu_ns "$pid")
        out=$(load "$bin" "$rate" "$calls")
        after=$(cpu_ns "$pid")
        kill "$pid"
        wait "$pid" 2>/dev/null || true
        pid=""
        ok=$(sed -n 's/.*"ok":\([0-9]*\).*/\1/p' <<<"$out")
        failed=$(sed -n 's/.*"failed":\([0-9]*\).*/\1/p' <<<"$out")
        echo "round $round  $bin  rate $rate  ok ${ok:-?} failed ${failed:-?}  blade CPU $(( (after - before) / calls )) ns per call"
    done
done
