#!/bin/bash
# Cross-blade vs local on the source blade, with `sipblade load`: two
# blades on 127.0.0.31 / .32, one core each, pinned to CPUs 0 and 1;
# callers on blade-1; callees on blade-1 (local) or blade-2 (cross),
# distinct agents per phase; two rounds. Prints blade CPU per 1,000 calls
# (from /proc/PID/stat), setup latency, and blade-1's hosting round trip
# (from its /metrics histogram), and UDP / QUIC datagrams per call (the
# QUIC ones also as blade-1 sends and receives them).
# Needs curl and python3. RATES runs a ladder: each rate in turn, its
# rounds alternating local and cross (ROUNDS, default 2).
#
#   RATE=500 SECS=10 PAIRS=500 benches/cross/run.sh
#   RATES="250 500 1000 2000" ROUNDS=1 SECS=6 benches/cross/run.sh
set -u
B=${SIPBLADE:-$PWD/target/release/sipblade}
RATES=${RATES:-${RATE:-500}}; SECS=${SECS:-10}; PAIRS=${PAIRS:-500}; ROUNDS=${ROUNDS:-2}
W=$(mktemp -d); cd "$W"; $B certs --dir certs --blades blade-1,blade-2 >/dev/null
{ $B load agents --pairs $PAIRS --first 100000; $B load agents --pairs $PAIRS --first 300000; } > agents.toml
for i in 1 2; do
  other=$((3 - i))
  cat > b$i.toml <<EOT
[blade]
id = "blade-$i"
domain = "cc.example"
sip = "127.0.0.3$i:5060"
cores = 1
admin = "127.0.0.3$i:8060"
[cluster]
listen = "127.0.0.3$i:7060"
ca = "certs/ca.pem"
cert = "certs/blade-$i.pem"
key = "certs/blade-$i.key"
lease_secs = 30
[[cluster.peer]]
id = "blade-$other"
quic = "127.0.0.3$other:7060"
sip = "127.0.0.3$other:5060"
[agents]
file = "agents.toml"
auth = false
EOT
done
taskset -c 0 $B run --config b1.toml > b1.log 2>&1 & p1=$!
taskset -c 1 $B run --config b2.toml > b2.log 2>&1 & p2=$!
trap 'kill $p1 $p2 2>/dev/null; wait $p1 $p2 2>/dev/null; rm -rf "$W"' EXIT
for i in $(seq 50); do curl -s 127.0.0.31:8060/status | grep -q '"up":true' && break; sleep 0.1; done
cpu() { awk '{s=$0; sub(/.*\) /,"",s); split(s,f," "); print f[12]+f[13]}' /proc/$1/stat; }
# UDP datagrams sent on this machine (loopback: every datagram of the test).
link_sent() { curl -s 127.0.0.3$1:8060/metrics | awk '/^sipblade_link_datagrams_total\{direction="sent"\}/ {print $2}'; }
udp_out() { awk '/^Udp:/ { if (h) print $5; h = 1 }' /proc/net/snmp; }
hist() { curl -s 127.0.0.31:8060/metrics | grep '^sipblade_hosting_rtt_seconds_bucket' | awk '{print $2}' | tr '\n' ' '; }
for RATE in $RATES; do
for round in $(seq $ROUNDS); do
  for kind in local cross; do
    callee=127.0.0.31:5060; first=100000; [ $kind = cross ] && callee=127.0.0.32:5060 && first=300000
    h0=$(hist); a=$(cpu $p1); b=$(cpu $p2); u=$(udp_out); l1=$(link_sent 1); l2=$(link_sent 2)
    out=$($B load run --blade 127.0.0.31:5060 --callee-blade $callee --first $first --pairs $PAIRS --rate $RATE --calls $((RATE*SECS)) --json 2>&1)
    a2=$(cpu $p1); b2=$(cpu $p2); h1=$(hist); u2=$(udp_out); l1b=$(link_sent 1); l2b=$(link_sent 2)
    echo "$out" | python3 -c "
import json,sys
r=json.loads(sys.stdin.read()); n=r['ok']+r['failed']
h0=[int(x) for x in '$h0'.split()]; h1=[int(x) for x in '$h1'.split()]
d=[b-a for a,b in zip(h0,h1)] if h0 else []
le=['100us','250us','500us','1ms','2.5ms','5ms','10ms','25ms','100ms','1s','inf']
def pct(p):
    if not d or d[-1]==0: return '-'
    for i,c in enumerate(d):
        if c>=p*d[-1]: return le[i]
print(f'rate $RATE round $round $kind: ok={r[\"ok\"]} failed={r[\"failed\"]} setup p50/p99={r[\"setup_ms\"][\"p50\"]}/{r[\"setup_ms\"][\"p99\"]} ms  blade-1 {($a2-$a)*10*1000/n:.0f} ms/1000  blade-2 {($b2-$b)*10*1000/n:.0f} ms/1000  rtt p50<={pct(0.5)} p99<={pct(0.99)} ({d[-1] if d else 0} hostings)  UDP datagrams/call {($u2-$u)/n:.1f} (QUIC {(${l1b:-0}-${l1:-0}+${l2b:-0}-${l2:-0})/n:.2f}: blade-1 {(${l1b:-0}-${l1:-0})/n:.2f} out, {(${l2b:-0}-${l2:-0})/n:.2f} in)')
"
  done
done
done
