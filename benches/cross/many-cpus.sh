#!/bin/bash
# Cross-blade vs local on a many-CPU machine: blade-1 pinned to CPU 0,
# blade-2 to CPU 1 (one core each), `sipblade load` on CPUs 8-15; two
# rounds of local and cross phases at each of RATES calls/s (default 1,000
# and 5,000). One raw line per phase (blade CPU ticks, hosting RTT histogram
# before/after, the generator's JSON) to stdout and OUTF ($OUT/cross.txt).
set -u
B=${SIPBLADE:-$PWD/target/release/sipblade}
OUTF=${OUTF:-${OUT:-/tmp}/cross.txt}
RATES=${RATES:-1000 5000}
W=$(mktemp -d); cd "$W"
$B certs --dir certs --blades blade-1,blade-2 >/dev/null
{ $B load agents --pairs 2000 --first 100000; $B load agents --pairs 2000 --first 300000; } > agents.toml
for i in 1 2; do o=$((3 - i))
printf '[blade]\nid = "blade-%s"\ndomain = "cc.example"\nsip = "127.0.0.3%s:5060"\ncores = 1\nadmin = "127.0.0.3%s:8060"\n[cluster]\nlisten = "127.0.0.3%s:7060"\nca = "certs/ca.pem"\ncert = "certs/blade-%s.pem"\nkey = "certs/blade-%s.key"\nlease_secs = 30\n[[cluster.peer]]\nid = "blade-%s"\nquic = "127.0.0.3%s:7060"\nsip = "127.0.0.3%s:5060"\n[agents]\nfile = "agents.toml"\nauth = false\n' $i $i $i $i $i $i $o $o $o > b$i.toml
done
taskset -c 0 $B run --config b1.toml > b1.log 2>&1 & p1=$!
taskset -c 1 $B run --config b2.toml > b2.log 2>&1 & p2=$!
sleep 2
get() { exec 3<>/dev/tcp/127.0.0.31/8060; printf 'GET %s HTTP/1.0\r\n\r\n' "$1" >&3; cat <&3; exec 3<&-; }
get /status | grep -o '"peers".*' | tee -a "$OUTF"
cpu() { awk '{s=$0; sub(/.*\) /,"",s); split(s,f," "); print f[12]+f[13]}' /proc/$1/stat; }
hist() { get /metrics | grep '^sipblade_hosting_rtt_seconds_bucket' | awk '{print $2}' | tr '\n' ' '; }
for rate in $RATES; do for round in 1 2; do for kind in local cross; do
  callee=127.0.0.31:5060; first=100000; [ $kind = cross ] && { callee=127.0.0.32:5060; first=300000; }
  h0=$(hist); a=$(cpu $p1); b=$(cpu $p2)
  out=$(timeout 60 taskset -c 8-15 $B load run --blade 127.0.0.31:5060 --callee-blade $callee --first $first --pairs 2000 --rate $rate --calls $((rate * 6)) --threads 4 --json 2>&1 | tr -d '\n')
  a2=$(cpu $p1); b2=$(cpu $p2); h1=$(hist)
  echo "rate=$rate round=$round kind=$kind b1_ticks=$((a2 - a)) b2_ticks=$((b2 - b)) h0=[$h0] h1=[$h1] $out" | tee -a "$OUTF"
done; done; done
kill $p1 $p2; wait
