#!/usr/bin/env bash
# Soak audit: two blades (cores = 2) on 127.0.7.1 (auth = true) and
# 127.0.7.2 (auth = false), the mixed load of soak.py in PHASES phases of
# SECS seconds at RATE calls/s, each followed by IDLE seconds of quiet;
# RSS, /status (sessions, agent states) and the transaction and session
# gauges sampled every 5 s into WORK/samples.txt, and at each phase end
# and after each idle into WORK/phases.txt. N (default 40) agents on
# 127.0.7.10 and up. Every load stops by itself; the blades stop at exit.
#   run.sh BIN WORK RATE SECS PHASES IDLE
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin=$1 work=$2 rate=$3 secs=$4 phases=$5 idle=$6
N=${N:-40}
FIRST=3000
mkdir -p "$work"
cd "$work"
"$bin" certs --dir certs --blades blade-1,blade-2 >/dev/null
{
for i in $(seq 0 $((N + 5))); do
  ext=$((FIRST + i))
  printf '[[agent]]\nbadge = "B%s"\nextension = "%s"\nkind = "agent"\npassword = "pw-%s"\n\n' "$ext" "$ext" "$ext"
done
} >agents.toml
for i in 1 2; do
  p=$((3 - i))
  auth=false; [ "$i" = 1 ] && auth=true
  cat >blade-$i.toml <<TOML
[blade]
id = "blade-$i"
domain = "cc.example"
sip = "127.0.7.$i:5060"
cores = 2
admin = "127.0.7.$i:8060"

[cluster]
listen = "127.0.7.$i:7060"
ca = "certs/ca.pem"
cert = "certs/blade-$i.pem"
key = "certs/blade-$i.key"
lease_secs = 30

[[cluster.peer]]
id = "blade-$p"
quic = "127.0.7.$p:7060"
sip = "127.0.7.$p:5060"

[agents]
file = "agents.toml"
auth = $auth
TOML
  RUST_LOG=warn "$bin" run --config blade-$i.toml >blade-$i.out 2>blade-$i.log &
  echo $! >blade-$i.pid
done
b1=$(cat blade-1.pid) b2=$(cat blade-2.pid)
trap 'kill $b1 $b2 $sampler 2>/dev/null' EXIT
sleep 3
sample() {
  local t=$1
  for i in 1 2; do
    pid=$(cat blade-$i.pid)
    rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
    st=$(curl -s --max-time 3 127.0.7.$i:8060/status)
    m=$(curl -s --max-time 3 127.0.7.$i:8060/metrics)
    sess=$(jq '.sessions|length' <<<"$st")
    states=$(jq -c '[.agents[].state]|group_by(.)|map({(.[0]):length})|add' <<<"$st")
    tx=$(grep -E '^sipblade_transactions_active|^sipblade_sessions_active' <<<"$m" | awk '{printf "%s=%s ", $1, $2}')
    echo "$t blade-$i rss_kb=$rss sessions=$sess $tx states=$states"
  done
}
(
  while true; do sample "$(date +%s)" >>samples.txt; sleep 5; done
) &
sampler=$!
sample "$(date +%s) start" | tee -a phases.txt
for ph in $(seq 1 "$phases"); do
  python3 "$here/soak.py" 127.0.7.1:5060 127.0.7.2:5060 $FIRST $N "$rate" "$secs" "$ph" >soak-$ph.json 2>soak-$ph.err
  echo "phase $ph: $(cat soak-$ph.json) $(tail -3 soak-$ph.err)" | tee -a phases.txt
  sample "$(date +%s) phase-$ph-end" | tee -a phases.txt
  sleep "$idle"
  sample "$(date +%s) phase-$ph-idle" | tee -a phases.txt
  curl -s 127.0.7.1:8060/metrics >metrics-1-$ph.txt
  curl -s 127.0.7.2:8060/metrics >metrics-2-$ph.txt
  curl -s 127.0.7.1:8060/status >status-1-$ph.json
  curl -s 127.0.7.2:8060/status >status-2-$ph.json
done
