#!/bin/bash
# QUIC datagrams of the inter-blade link per cross-blade call: two blades
# of one core (127.0.0.31 / .32), `sipblade load` placing cross calls at
# RATE calls/s for SECS seconds, ROUNDS rounds; `/metrics`
# (sipblade_link_datagrams_total) read on both blades before and after
# each round. One line per round: sent and received per call, each blade.
#
#   RATE=1000 SECS=4 benches/cross/link-datagrams.sh
set -u
B=${SIPBLADE:-$PWD/target/release/sipblade}
RATE=${RATE:-1000}; SECS=${SECS:-4}; ROUNDS=${ROUNDS:-2}; PAIRS=300
command -v curl >/dev/null || { echo "link-datagrams.sh: needs curl" >&2; exit 77; }
W=$(mktemp -d); cd "$W"; trap 'kill $p1 $p2 2>/dev/null; wait; rm -rf "$W"' EXIT
$B certs --dir certs --blades blade-1,blade-2 >/dev/null
{ $B load agents --pairs $PAIRS --first 100000; $B load agents --pairs $PAIRS --first 300000; } > agents.toml
for i in 1 2; do o=$((3 - i))
printf '[blade]\nid = "blade-%s"\ndomain = "cc.example"\nsip = "127.0.0.3%s:5060"\ncores = 1\nadmin = "127.0.0.3%s:8060"\n[cluster]\nlisten = "127.0.0.3%s:7060"\nca = "certs/ca.pem"\ncert = "certs/blade-%s.pem"\nkey = "certs/blade-%s.key"\nlease_secs = 30\n[[cluster.peer]]\nid = "blade-%s"\nquic = "127.0.0.3%s:7060"\nsip = "127.0.0.3%s:5060"\n[agents]\nfile = "agents.toml"\nauth = false\n' $i $i $i $i $i $i $o $o $o > b$i.toml
done
$B run --config b1.toml > b1.log 2>&1 & p1=$!
$B run --config b2.toml > b2.log 2>&1 & p2=$!
sleep 2
# "sent received" of blade $1's link.
datagrams() {
  curl -s -m 5 "http://127.0.0.3$1:8060/metrics" | awk '
    /^sipblade_link_datagrams_total\{direction="sent"\}/ { s = $2 }
    /^sipblade_link_datagrams_total\{direction="received"\}/ { r = $2 }
    END { print s + 0, r + 0 }'
}
n=$((RATE * SECS))
for round in $(seq "$ROUNDS"); do
  read -r s1 r1 <<<"$(datagrams 1)"; read -r s2 r2 <<<"$(datagrams 2)"
  out=$(timeout 60 $B load run --blade 127.0.0.31:5060 --callee-blade 127.0.0.32:5060 --first 300000 \
    --pairs $PAIRS --rate $RATE --calls $n --threads 1 --json 2>&1 | tr -d '\n')
  sleep 0.5
  read -r S1 R1 <<<"$(datagrams 1)"; read -r S2 R2 <<<"$(datagrams 2)"
  echo "round $round $(grep -o '"ok":[0-9]*,"failed":[0-9]*' <<<"$out")" \
    "blade-1 sent $(( S1 - s1 )) received $(( R1 - r1 ))" \
    "blade-2 sent $(( S2 - s2 )) received $(( R2 - r2 ))" \
    "per call: blade-1 $(awk -v a=$((S1 - s1)) -v b=$((R1 - r1)) -v n=$n 'BEGIN { printf "%.2f sent %.2f received", a / n, b / n }')"
done
