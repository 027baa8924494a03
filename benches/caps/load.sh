#!/usr/bin/env bash
# sipblade and Kamailio side by side under `sipblade load` (our own
# generator: many sockets, thousands of calls in flight, past the rates
# where sipp saturates). For each rate, one phase per proxy, the order
# alternating; the proxy on CPUs 0..CORES-1, the generator on the last CPU.
#
#   benches/caps/load.sh [RATE...]        # default: 300 1000 2500
#
# Environment: CORES (sipblade cores = Kamailio children, default 1),
# SECS (seconds per phase, default 6), PAIRS (caller/callee pairs, 1000),
# SIPBLADE_BIN (default target/release/sipblade), GEN_CPUS (the
# generator's CPU list, default the last CPU) and THREADS (its worker
# threads, default 2): on a machine with CPUs to spare, give the generator
# its own set so that it neither shares nor limits the proxy's.
#
# Prints, per proxy and rate: calls ok / failed, the proxy's CPU in ms per
# 1,000 calls (utime + stime of all its processes and threads, from /proc),
# its syscalls and context switches per call (perf stat, when perf is
# installed), and the generator's setup time p50 / p99. Loopback only
# (127.0.0.45 sipblade, 127.0.0.46 Kamailio); every phase is bounded by
# its call count and `timeout`. Needs kamailio (benches/caps/run.sh
# installs it); exits 77 without it.
set -euo pipefail
set +m
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${SIPBLADE_BIN:-$root/target/release/sipblade}"
cores="${CORES:-1}"
secs="${SECS:-6}"
pairs="${PAIRS:-1000}"
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(300 1000 2500)
command -v kamailio >/dev/null || { echo "load.sh: kamailio not installed" >&2; exit 77; }
[ -x "$bin" ] || (cd "$root" && cargo build --release --quiet)
ncpu=$(nproc)
proxy_cpus="0-$((cores - 1))"
gen_cpu="${GEN_CPUS:-$((ncpu - 1))}"
threads="${THREADS:-2}"

work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$bin" load agents --pairs "$pairs" --first 100000 >"$work/agents.toml"
cat >"$work/blade.toml" <<TOML
[blade]
id = "load-blade"
domain = "cc.example"
sip = "127.0.0.45:5060"
cores = $cores
admin = "127.0.0.45:8060"
[agents]
file = "$work/agents.toml"
auth = false
TOML
taskset -c "$proxy_cpus" setsid "$bin" run --config "$work/blade.toml" >"$work/sipblade.log" 2>&1 &
pids+=($!)
sb_group=$!
# The same Kamailio as benches/caps/run.sh (kamailio.cfg, TLSF managers)
# but 2 GB of shared memory: with 512 MB one worker ran out at 5,000
# calls/s (sip_msg_shm_clone failed, calls answered 500).
taskset -c "$proxy_cpus" setsid kamailio -DD -E -f "$here/kamailio.cfg" \
    -A "CAPS_IP=127.0.0.46" -A "CAPS_PORT=5060" -A "CAPS_CHILDREN=$cores" \
    -A "CAPS_TCP_CHILDREN=$cores" -A 'CAPS_ALIAS="cc.example"' \
    -m 2048 -M 64 -x tlsf -X tlsf -w "$work" >"$work/kamailio.log" 2>&1 &
pids+=($!)
kam_group=$!
sleep 2

group_pids() { pgrep -g "$1" | paste -sd, -; }
group_ticks() {
    local total=0 p
    for p in $(pgrep -g "$1"); do
        total=$((total + $(awk '{s=$0; sub(/.*\) /,"",s); split(s,f," "); print f[12]+f[13]}' "/proc/$p/stat")))
    done
    echo "$total"
}
hz=$(getconf CLK_TCK)

phase() { # name group address rate
    local name=$1 group=$2 addr=$3 rate=$4 calls=$(($4 * secs))
    local before after perf_pid="" out
    before=$(group_ticks "$group")
    if command -v perf >/dev/null; then
        perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$(group_pids "$group")" \
            -o "$work/perf.txt" 2>/dev/null &
        perf_pid=$!
        sleep 0.2
    fi
    out=$(timeout $((secs + 60)) taskset -c "$gen_cpu" "$bin" load run --blade "$addr" \
        --callee-blade "$addr" --first 100000 --pairs "$pairs" --rate "$rate" \
        --calls "$calls" --threads "$threads" --json 2>/dev/null || true)
    [ -n "$perf_pid" ] && { kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; }
    after=$(group_ticks "$group")
    local sys="-" cs="-"
    if [ -n "$perf_pid" ] && [ -s "$work/perf.txt" ]; then
        sys=$(awk -F, -v n="$calls" '/sys_enter/ {printf "%.1f", $1 / n}' "$work/perf.txt")
        cs=$(awk -F, -v n="$calls" '/context-switches/ {printf "%.1f", $1 / n}' "$work/perf.txt")
    fi
    local ok failed p50 p99
    ok=$(sed -n 's/.*"ok":\([0-9]*\).*/\1/p' <<<"$out")
    failed=$(sed -n 's/.*"failed":\([0-9]*\).*/\1/p' <<<"$out")
    p50=$(sed -n 's/.*"setup_ms":{[^}]*"p50":\([0-9.]*\).*/\1/p' <<<"$out")
    p99=$(sed -n 's/.*"setup_ms":{[^}]*"p99":\([0-9.]*\).*/\1/p' <<<"$out")
    local ms=$(( (after - before) * 1000 * 1000 / hz / calls ))
    printf '| %s | %s | %s / %s | %s | %s | %s | %s / %s |\n' "$name" "$rate" \
        "${ok:-?}" "${failed:-?}" "$ms" "$sys" "$cs" "${p50:-?}" "${p99:-?}"
}

echo "sipblade $("$bin" --version 2>/dev/null | head -n 1) (cores = $cores) on 127.0.0.45," \
    "kamailio $(kamailio -v | sed -n 's/^version: kamailio \([^ ]*\).*/\1/p') (children = $cores," \
    "tlsf) on 127.0.0.46; proxies on CPUs $proxy_cpus, sipblade load on CPUs $gen_cpu ($threads threads);" \
    "$pairs pairs, $secs s per phase; $(date -u +%FT%TZ)"
echo
echo "| proxy | calls/s | ok / failed | CPU ms / 1,000 calls | syscalls / call | context switches / call | setup ms p50 / p99 |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
i=0
for rate in "${rates[@]}"; do
    if [ $((i % 2)) -eq 0 ]; then
        phase sipblade "$sb_group" 127.0.0.45:5060 "$rate"
        phase kamailio "$kam_group" 127.0.0.46:5060 "$rate"
    else
        phase kamailio "$kam_group" 127.0.0.46:5060 "$rate"
        phase sipblade "$sb_group" 127.0.0.45:5060 "$rate"
    fi
    i=$((i + 1))
done
