#!/bin/bash
# Syscalls and context switches of the source blade per call, local vs
# cross-blade: two blades of one core (127.0.0.31 / .32), `sipblade load`
# at RATE calls/s for SECS seconds per phase, two rounds, `perf stat` on
# blade-1. Needs perf. One line per phase: per-call counts.
#
#   RATE=500 SECS=4 benches/cross/syscalls.sh
set -u
B=${SIPBLADE:-$PWD/target/release/sipblade}
RATE=${RATE:-500}; SECS=${SECS:-4}; PAIRS=300
command -v perf >/dev/null || { echo "syscalls.sh: needs perf" >&2; exit 77; }
W=$(mktemp -d); cd "$W"; trap 'rm -rf "$W"' EXIT; $B certs --dir certs --blades blade-1,blade-2 >/dev/null
{ $B load agents --pairs $PAIRS --first 100000; $B load agents --pairs $PAIRS --first 300000; } > agents.toml
for i in 1 2; do o=$((3 - i))
printf '[blade]\nid = "blade-%s"\ndomain = "cc.example"\nsip = "127.0.0.3%s:5060"\ncores = 1\nadmin = "127.0.0.3%s:8060"\n[cluster]\nlisten = "127.0.0.3%s:7060"\nca = "certs/ca.pem"\ncert = "certs/blade-%s.pem"\nkey = "certs/blade-%s.key"\nlease_secs = 30\n[[cluster.peer]]\nid = "blade-%s"\nquic = "127.0.0.3%s:7060"\nsip = "127.0.0.3%s:5060"\n[agents]\nfile = "agents.toml"\nauth = false\n' $i $i $i $i $i $i $o $o $o > b$i.toml
done
$B run --config b1.toml > b1.log 2>&1 & p1=$!
$B run --config b2.toml > b2.log 2>&1 & p2=$!
sleep 2
EV=syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_membarrier,syscalls:sys_enter_sendmsg,syscalls:sys_enter_recvmsg,raw_syscalls:sys_enter,context-switches
for kind in local cross local cross; do
  callee=127.0.0.31:5060; first=100000; [ $kind = cross ] && { callee=127.0.0.32:5060; first=300000; }
  perf stat -x, -e $EV -p $p1 -o perf.txt & pp=$!; sleep 0.3
  out=$(timeout 60 $B load run --blade 127.0.0.31:5060 --callee-blade $callee --first $first --pairs $PAIRS --rate $RATE --calls $((RATE*SECS)) --threads 1 --json 2>&1 | tr -d '\n')
  kill -INT $pp; wait $pp
  n=$((RATE*SECS))
  echo "$kind $(echo "$out" | grep -o '"ok":[0-9]*,"failed":[0-9]*') $(awk -F, -v n=$n '/^[0-9]/{split($3,a,":"); printf "%s=%.2f ", a[length(a)], $1/n}' perf.txt)"
done
kill $p1 $p2; wait
