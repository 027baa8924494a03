#!/bin/bash
# Blade scaling on a 16-CPU machine: a blade with 1, 2, 4, 8 cores
# (executors pinned to CPUs 0..n-1) against `sipblade load` on CPUs 8-15,
# rising rates per core count until calls fail. One line per run.
#
# PLAN overrides the ladder: "CORES:RATE,RATE,... CORES:RATE,..." (default
# 1, 2, 4 and 8 cores at 5,000 to 80,000 calls/s); SIPBLADE the binary;
# LABEL a word put on each line (to tell binaries apart in one file).
set -u
B=${SIPBLADE:-$PWD/target/release/sipblade}
PLAN=${PLAN:-"1:5000,10000,20000,40000,60000,80000 2:5000,10000,20000,40000,60000,80000 4:5000,10000,20000,40000,60000,80000 8:5000,10000,20000,40000,60000,80000"}
LABEL=${LABEL:-sipblade}
OUTF=${OUT:-/tmp}/scale.txt
W=$(mktemp -d); cd "$W"
"$B" load agents --pairs 4000 > agents.toml
echo "nproc=$(nproc) kernel=$(uname -r) clk=$(getconf CLK_TCK) $(lscpu | grep 'Model name')" | tee -a "$OUTF"
cpu() { awk '{s=$0; sub(/.*\) /,"",s); split(s,f," "); print f[12]+f[13]}' /proc/$1/stat; }
run() {
  local cores=$1 rate=$2 secs=$3
  printf '[blade]\nid = "scale"\ndomain = "cc.example"\nsip = "127.0.0.1:5060"\ncores = %s\nadmin = "127.0.0.1:8060"\n[agents]\nfile = "agents.toml"\nauth = false\n' "$cores" > b.toml
  "$B" run --config b.toml > blade.log 2>&1 & local pid=$!
  sleep 1
  local b; b=$(cpu $pid)
  local out; out=$(timeout $((secs + 30)) taskset -c 8-15 "$B" load run --blade 127.0.0.1:5060 \
      --pairs 4000 --rate "$rate" --calls $((rate * secs)) --threads 8 --json 2>&1 | tr -d '\n')
  local a; a=$(cpu $pid)
  kill $pid; wait $pid 2>/dev/null
  echo "$LABEL cores=$cores rate=$rate secs=$secs blade_ticks=$((a - b)) $out" | tee -a "$OUTF"
  case "$out" in *'"failed":0,'*) return 0;; *) return 1;; esac
}
for step in $PLAN; do
  cores=${step%%:*}
  IFS=, read -ra rates <<< "${step#*:}"
  for rate in "${rates[@]}"; do
    run "$cores" "$rate" 6 || break
  done
done
