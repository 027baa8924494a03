#!/bin/bash
# Session 8, second device run: cross-blade vs local (session-7 build), with
# loopback receive processing on the blades' own CPUs (plain) and moved to
# CPUs 2-7 by RPS (rps), as a NIC's would be on separate machines.
set -u
RPS=/sys/class/net/lo/queues/rx-0/rps_cpus
echo "== $(nproc) CPUs, $(uname -r), $(date -u +%H:%M), rps_cpus=$(cat $RPS)"
for mode in plain rps plain rps; do
  if [ $mode = rps ]; then echo fc > $RPS; else echo 0 > $RPS; fi
  echo "== $mode rps_cpus=$(cat $RPS)"
  RATES="1000 5000" OUTF=$OUT/cross-$mode.txt SIPBLADE=$PWD/.dev/sipblade-s7 bash benches/cross/many-cpus.sh 2>&1 | grep -o 'rate=[0-9]* round=[0-9] kind=[a-z]* b1_ticks=[0-9]* b2_ticks=[0-9]*'
done
echo 0 > $RPS
