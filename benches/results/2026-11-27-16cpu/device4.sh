#!/bin/bash
# Session 8, first device run: cross-blade vs local for the session-6 and session-7 builds.
set -u
echo "== $(nproc) CPUs, $(uname -r), $(date -u +%H:%M)"
for b in s6 s7 s6 s7; do
  echo "== $b"
  RATES="1000 5000" OUTF=$OUT/cross-$b.txt SIPBLADE=$PWD/.dev/sipblade-$b bash benches/cross/many-cpus.sh 2>&1 | grep -o 'rate=[0-9]* round=[0-9] kind=[a-z]* b1_ticks=[0-9]* b2_ticks=[0-9]*'
done
