#!/bin/bash
# Session 18: cross-blade vs local on the source blade at 1,000-5,000
# calls/s (the session-17 build, d3fef7d), then the same at 1,000/s with
# glommio's spin_before_park at 10 and 50 us (an experiment build that
# reads SIPBLADE_SPIN_US) to see whether idle polling saves wake-ups.
set -u
echo "== $(nproc) CPUs, $(uname -r), $(date -u +%H:%M:%S), $(lscpu | grep 'Model name' | tr -s ' ')"
echo 0 > /sys/class/net/lo/queues/rx-0/rps_cpus
summ() { grep -o 'rate=[0-9]* round=[0-9] kind=[a-z]* b1_ticks=[0-9]* b2_ticks=[0-9]*\|"ok":[0-9]*,"failed":[0-9]*\|"setup_ms":{"p50":[0-9.]*,"p90":[0-9.]*,"p99":[0-9.]*' "$1" | paste -sd' ' | sed 's/ rate=/\nrate=/g'; echo; }
RATES="1000 2000 3000 5000" OUTF=$OUT/ladder.txt SIPBLADE=$PWD/.dev/sipblade bash benches/cross/many-cpus.sh >/dev/null 2>&1
echo "== ladder $(date -u +%T)"; summ $OUT/ladder.txt
for s in 10 50; do
  SIPBLADE_SPIN_US=$s RATES=1000 OUTF=$OUT/spin$s.txt SIPBLADE=$PWD/.dev/sipblade-spin bash benches/cross/many-cpus.sh >/dev/null 2>&1
  echo "== spin $s us $(date -u +%T)"; summ $OUT/spin$s.txt
done
echo "== done $(date -u +%T)"
