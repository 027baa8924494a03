#!/bin/bash
# Session 8, third device run: the one- and two-core ladders of this
# session's build, twice, for the cores = 2 over cores = 1 ratio.
set -u
echo "== $(nproc) CPUs, $(uname -r), $(date -u +%H:%M)"
for round in 1 2; do
  OUT=$OUT SIPBLADE=$PWD/.dev/sipblade-s8 LABEL=round$round \
    PLAN="1:12000,14000,16000,18000 2:22000,26000,30000,34000" benches/scaling/scale.sh 2>&1 \
    | grep -o 'round[0-9] cores=[0-9]* rate=[0-9]* secs=[0-9]* blade_ticks=[0-9]*\|"achieved_cps":[0-9.]*\|"ok":[0-9]*,"failed":[0-9]*\|"setup_ms":{"p50":[0-9.]*,"p90":[0-9.]*,"p99":[0-9.]*' | paste -sd' ' | sed 's/ round/\nround/g'
done
