#!/bin/bash
# Session 15 device run: the current build (session 14's end) on a 16-CPU
# machine. Cross-blade vs local with loopback delivery plain and by RPS;
# sipblade vs Kamailio under `sipblade load` at cores = 1 and 2; the one-
# and two-core CAPS ladders.
set -u
export PATH=$PWD/.dev/bin:$PATH
B=$PWD/.dev/sipblade
RPS=/sys/class/net/lo/queues/rx-0/rps_cpus
echo "== $(nproc) CPUs, $(uname -r), $(date -u +%H:%M:%S), $(lscpu | grep 'Model name' | tr -s ' ')"
for mode in plain rps; do
  if [ $mode = rps ]; then echo fc > $RPS; else echo 0 > $RPS; fi
  echo "== cross $mode rps_cpus=$(cat $RPS) $(date -u +%T)"
  RATES="1000 5000" OUTF=$OUT/cross-$mode.txt SIPBLADE=$B bash benches/cross/many-cpus.sh 2>&1 | grep -o 'rate=[0-9]* round=[0-9] kind=[a-z]* b1_ticks=[0-9]* b2_ticks=[0-9]*\|"ok":[0-9]*,"failed":[0-9]*' | paste -sd' ' | sed 's/ rate=/\nrate=/g'
done
echo 0 > $RPS
for c in 1 2; do
  echo "== load.sh cores=$c $(date -u +%T)"
  CORES=$c GEN_CPUS=8-15 THREADS=8 PAIRS=4000 SECS=6 SIPBLADE_BIN=$B bash benches/caps/load.sh 2000 5000 10000 2>&1 | tee $OUT/load-cores$c.txt
done
echo "== scale $(date -u +%T)"
OUT=$OUT SIPBLADE=$B LABEL=s15 PLAN="1:12000,14000,16000 2:22000,26000,30000" bash benches/scaling/scale.sh 2>&1 \
  | grep -o 's15 cores=[0-9]* rate=[0-9]* secs=[0-9]* blade_ticks=[0-9]*\|"achieved_cps":[0-9.]*\|"ok":[0-9]*,"failed":[0-9]*\|"setup_ms":{"p50":[0-9.]*,"p90":[0-9.]*,"p99":[0-9.]*' | paste -sd' ' | sed 's/ s15/\ns15/g'
echo "== done $(date -u +%T)"
