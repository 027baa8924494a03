#!/bin/bash
# Two sipblade builds taking turns under the same `sipblade load`, for a
# before/after ratio measured in one run (this VM is too noisy for lone
# figures). One blade (cores = CORES, default 2) on 127.0.0.45, a fresh
# one per phase, the generator (the first binary's `load`) sharing the
# machine; blade CPU is utime + stime from /proc over the phase. One line
# per phase.
#
#   benches/scaling/ab.sh RATE SECS ROUNDS BIN_A BIN_B
#
# Loopback only; each phase is bounded by its call count and `timeout`.
set -u
rate=$1 secs=$2 rounds=$3; shift 3
cores=${CORES:-2}
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
"$1" load agents --pairs 1000 --first 100000 > "$W/agents.toml"
cpu() { awk '{s=$0; sub(/.*\) /,"",s); split(s,f," "); print f[12]+f[13]}' "/proc/$1/stat"; }
printf '[blade]\nid = "ab"\ndomain = "cc.example"\nsip = "127.0.0.45:5060"\ncores = %s\nadmin = "127.0.0.45:8060"\n[agents]\nfile = "%s/agents.toml"\nauth = false\n' \
  "$cores" "$W" > "$W/b.toml"
hz=$(getconf CLK_TCK)
for r in $(seq "$rounds"); do
  for b in "$@"; do
    "$b" run --config "$W/b.toml" > "$W/blade.log" 2>&1 & pid=$!
    sleep 1
    c0=$(cpu $pid)
    out=$(timeout $((secs + 30)) "$1" load run --blade 127.0.0.45:5060 --first 100000 --pairs 1000 \
      --rate "$rate" --calls $((rate * secs)) --json 2>&1 | tr -d '\n')
    c1=$(cpu $pid)
    kill $pid; wait $pid 2>/dev/null
    ok=$(sed -n 's/.*"ok":\([0-9]*\).*/\1/p' <<<"$out")
    failed=$(sed -n 's/.*"failed":\([0-9]*\).*/\1/p' <<<"$out")
    p50=$(sed -n 's/.*"setup_ms":{[^}]*"p50":\([0-9.]*\).*/\1/p' <<<"$out")
    echo "round=$r bin=$b rate=$rate ms_per_1000=$(( (c1 - c0) * 1000 * 1000 / hz / (rate * secs) )) ok=${ok:-?} failed=${failed:-?} setup_p50_ms=${p50:-?}"
  done
done
