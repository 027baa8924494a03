#!/usr/bin/env bash
# Side-by-side CAPS (calls per second) harness: the same sipp load through
# sipblade and through Kamailio 5.6 configured as its equal
# (benches/caps/kamailio.cfg: in-memory registrar, tm stateful relay, rr
# record-routing, no authentication), on loopback only.
#
#   benches/caps/run.sh [--smoke] [options]
#
# What it does:
#   1. installs Debian's sip-tester (sipp) and kamailio if missing (as root,
#      with apt-get), builds target/release/sipblade if missing;
#   2. checks the Kamailio config (`kamailio -c`), starts Kamailio
#      (children = CORES, TLSF memory managers) on 127.0.0.42 and sipblade (cores = CORES,
#      auth = false, PAIRS caller/callee pairs of agents) on 127.0.0.41,
#      each on a free port;
#   3. registers the callees (from the UAS address 127.0.0.44) and the
#      callers (from the UAC address 127.0.0.43) on both proxies;
#   4. for each offered rate, one phase per proxy (the order alternates
#      from one rate to the next): a sipp UAS (sipp/uas_call.xml) and a
#      sipp UAC (sipp/uac_call.xml: INVITE -> 100/180/200 -> ACK -> hold ->
#      BYE -> 200) placing CALLS calls at that rate (-r), call N by pair
#      N mod PAIRS;
#   5. then, at one moderate rate, busy calls (the callee answers 486,
#      sipp/u[ac]s_busy.xml) and calls cancelled after the 180
#      (sipp/u[ac]s_cancel.xml) through each proxy;
#   6. reports, per proxy, scenario and rate: calls ok / failed (sipp's
#      counters: a call whose outcome was not the scenario's is failed),
#      achieved CAPS, the proxy's CPU in ms per 1,000 calls (utime + stime
#      from /proc/PID/stat of every process of the proxy's process group:
#      Kamailio's main process and all the children it forks, sipblade's
#      one process with all its threads; sampled just before the UAC starts
#      and just after it exits; also from the threads' schedstat, and that
#      less the proxy's idle CPU measured before the phases), sipp's own CPU
#      (UAC + UAS, from their rusage) and the call setup time (INVITE sent
#      to 200 received at the UAC, sipp -trace_rtt) p50 / p99 / mean, in
#      sipp's whole milliseconds. A markdown table goes to stdout;
#      results.json, results.tsv, table.md and two SVG plots (caps.svg:
#      achieved vs offered CAPS; cpu.svg: proxy CPU per 1,000 calls vs
#      offered rate) go to OUT (default target/caps/).
#
# Options (each also as an environment variable):
#   --smoke               200 calls at 50/s and 50 busy + 50 cancelled calls
#                         per proxy; exit 1 unless every call of both
#                         proxies succeeded (what tests/caps_smoke.rs runs)
#   --rates "R1 R2 ..."   CAPS_RATES, offered rates (default "100 200 400 800")
#   --calls N             CAPS_CALLS, calls per rate and proxy (default 2000)
#   --extra-rate R        CAPS_EXTRA_RATE, rate of the busy/cancel phases (200)
#   --extra-calls N       CAPS_EXTRA_CALLS, calls per busy/cancel phase (1000)
#   --pairs N             CAPS_PAIRS, caller/callee pairs (default 500; an
#                         agent takes one call at a time, so a pair must not
#                         be reused before its last call ended: the UAC
#                         keeps at most PAIRS calls open, sipp -l)
#   --cores N             CAPS_CORES, sipblade cores = Kamailio children (2)
#   --sipp-pairs N        CAPS_SIPP_PAIRS, UAC/UAS sipp pairs sharing each
#                         phase's calls and rate (default 1; one sipp pair
#                         stops scaling at 1,000-3,000 calls/s); the agent
#                         pairs are dealt out among them
#   --sipp-transport T    CAPS_SIPP_TRANSPORT, the UACs' sipp transport: u1
#                         (one UDP socket, the default) or un (one per call)
#   --hold-ms N           CAPS_HOLD_MS, ACK to BYE (default 10)
#   --idle-secs N         CAPS_IDLE_SECS, idle CPU measurement (default 3)
#   --out DIR             CAPS_OUT, results directory (default target/caps)
#   --bin PATH            SIPBLADE_BIN, the sipblade binary
#   --keep                CAPS_KEEP=1, keep the work directory with all logs
#
# Exit status: 0 when the run completed (in a full run, failed calls are
# reported, not fatal; --smoke fails on any), 1 on a failure, 77 when sipp
# or kamailio is missing and cannot be installed (not root, or no apt-get).
# Every sipp runs with its own -timeout and under `timeout`; the EXIT trap
# kills every process started here (each in its own process group).
set -euo pipefail
set +m

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
prog="caps"
# used_ports, free_port, udp_bound, final_counts: shared with the sipp tests.
. "$root/tests/sipp/common.sh"

fail() {
    echo "$prog: FAIL: $*" >&2
    exit 1
}
usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

smoke=""
rates="${CAPS_RATES:-100 200 400 800}"
calls="${CAPS_CALLS:-2000}"
extra_rate="${CAPS_EXTRA_RATE:-200}"
extra_calls="${CAPS_EXTRA_CALLS:-1000}"
pairs="${CAPS_PAIRS:-500}"
cores="${CAPS_CORES:-2}"
sipp_pairs="${CAPS_SIPP_PAIRS:-1}"
sipp_transport="${CAPS_SIPP_TRANSPORT:-u1}"
hold_ms="${CAPS_HOLD_MS:-10}"
idle_secs="${CAPS_IDLE_SECS:-3}"
out="${CAPS_OUT:-$root/target/caps}"
bin="${SIPBLADE_BIN:-}"
keep="${CAPS_KEEP:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) smoke=1 ;;
        --rates) rates="${2:?--rates needs a value}"; shift ;;
        --calls) calls="${2:?--calls needs a value}"; shift ;;
        --extra-rate) extra_rate="${2:?--extra-rate needs a value}"; shift ;;
        --extra-calls) extra_calls="${2:?--extra-calls needs a value}"; shift ;;
        --pairs) pairs="${2:?--pairs needs a value}"; shift ;;
        --cores) cores="${2:?--cores needs a value}"; shift ;;
        --sipp-pairs) sipp_pairs="${2:?--sipp-pairs needs a value}"; shift ;;
        --sipp-transport) sipp_transport="${2:?--sipp-transport needs a value}"; shift ;;
        --hold-ms) hold_ms="${2:?--hold-ms needs a value}"; shift ;;
        --idle-secs) idle_secs="${2:?--idle-secs needs a value}"; shift ;;
        --out) out="${2:?--out needs a value}"; shift ;;
        --bin) bin="${2:?--bin needs a value}"; shift ;;
        --keep) keep=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "$prog: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -n "$smoke" ]; then
    rates="50" calls=200 extra_rate=50 extra_calls=50 pairs=50 idle_secs=1
fi
for v in calls extra_rate extra_calls pairs cores idle_secs sipp_pairs; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || fail "$v must be a positive number (got '${!v}')"
done
[[ "$hold_ms" =~ ^[0-9]+$ ]] || fail "hold-ms must be a number"
[ "$pairs" -le 9999 ] || fail "at most 9999 pairs"
[ "$sipp_pairs" -le "$pairs" ] || fail "more sipp pairs ($sipp_pairs) than agent pairs ($pairs)"
case "$sipp_transport" in
    u1) per_call_sockets="" ;;
    # One socket per call: sipp wants its socket bound under the open-files
    # limit; the UAC never has more calls open than its agent pairs.
    un) per_call_sockets=1 ;;
    *) fail "sipp-transport must be u1 or un" ;;
esac
for r in $rates; do
    [[ "$r" =~ ^[1-9][0-9]*$ ]] || fail "rates must be positive numbers (got '$r')"
done
[ -n "$rates" ] || fail "no rate given"

# ---- 1. what it needs ----------------------------------------------------

apt_updated=""
install_pkg() { # install_pkg COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "$prog: installing $2" >&2
        if [ -z "$apt_updated" ]; then
            apt-get update -qq >/dev/null 2>&1 || true
            apt_updated=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 ||
            echo "$prog: warning: apt-get install $2 failed" >&2
    fi
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "$prog: SKIP: $1 is not installed and cannot be installed here" \
        "(run as root with apt-get: apt-get install -y $2)" >&2
    exit 77
}
install_pkg sipp sip-tester
install_pkg kamailio kamailio
kamailio_version="$(kamailio -v 2>/dev/null | sed -n 's/^version: kamailio \([^ ]*\).*/\1/p' | head -n 1)"
sipp_version="$(sipp -v 2>/dev/null | grep -o 'SIPp v[^ ]*' | head -n 1 | sed 's/[.]$//' || true)"

if [ -z "$bin" ]; then
    bin="$root/target/release/sipblade"
    if [ ! -x "$bin" ]; then
        echo "$prog: building $bin (cargo build --release)" >&2
        (cd "$root" && cargo build --release --locked --bin sipblade) >&2 ||
            fail "cargo build --release failed"
    fi
fi
[ -x "$bin" ] || fail "no sipblade binary at $bin"

# ---- work directory, processes, cleanup ------------------------------------

work="$(mktemp -d "${TMPDIR:-/tmp}/sipblade-caps.XXXXXX")"
groups=() # process groups started here (each leader's pid)
cleanup() {
    local status=$? g
    for g in "${groups[@]}"; do
        kill -TERM -- "-$g" 2>/dev/null || true
    done
    for g in "${groups[@]}"; do
        wait "$g" 2>/dev/null || true
    done
    # Anything of ours that ignored TERM.
    for g in "${groups[@]}"; do
        kill -KILL -- "-$g" 2>/dev/null || true
    done
    if [ "$status" != 0 ] || [ -n "$keep" ]; then
        echo "$prog: logs kept in $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# spawn NAME CMD...: runs CMD in a process group of its own (setsid; CMD
# must not make a group of its own: `timeout --foreground`), its
# output in $work/NAME.out, its CPU (user and system seconds, from bash's
# `time`: the rusage of CMD and what it waited for) in $work/NAME.time.
# Sets spawned.
spawn() {
    local name="$1"
    shift
    setsid bash -c 'TIMEFORMAT="%3U %3S"; { time "$@" >"$0.out" 2>&1; } 2>"$0.time"' \
        "$work/$name" "$@" &
    spawned=$!
    groups+=("$spawned")
}
# stop_group PID: TERM to the process group PID leads, KILL to whatever is
# left of it after 2 s (sipp catches TERM).
stop_group() {
    kill -TERM -- "-$1" 2>/dev/null || return 0
    for _ in $(seq 20); do
        kill -0 -- "-$1" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$1" 2>/dev/null || true
}
# forget PID: a reaped group must not be signalled again.
forget() {
    local g keep_groups=()
    for g in "${groups[@]}"; do
        [ "$g" = "$1" ] || keep_groups+=("$g")
    done
    groups=("${keep_groups[@]}")
}

# port_free IP PORT: waits (10 s at most) until no UDP socket is bound there.
port_free() {
    for _ in $(seq 100); do
        udp_bound "$1" "$2" || return 0
        sleep 0.1
    done
    return 1
}
show_logs() {
    local f
    for f in "$@"; do
        if [ -s "$f" ]; then
            echo "---- $f (last 30 lines)" >&2
            tail -n 30 "$f" >&2
            echo >&2
        fi
    done
}
now_ns() { date +%s%N; }

# Process group $1: "ticks ns procs threads": the CPU of all its
# processes (utime + stime of /proc/PID/stat, which covers all of a
# process's threads, in clock ticks; and the sum of the threads' schedstat
# run time, in ns), and how many processes and threads it has.
group_stat() {
    local pg="$1" f line rest pid t ticks=0 ns=0 procs=0 threads=0
    local -a a
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        rest="${line##*) }"
        read -ra a <<<"$rest"
        [ "${a[2]:-}" = "$pg" ] || continue
        ticks=$((ticks + a[11] + a[12]))
        procs=$((procs + 1))
        threads=$((threads + a[17]))
        pid="${f#/proc/}"
        pid="${pid%/stat}"
        for t in /proc/"$pid"/task/*/schedstat; do
            { read -r line _ <"$t"; } 2>/dev/null || continue
            ns=$((ns + line))
        done
    done
    echo "$ticks $ns $procs $threads"
}

# User + system seconds from a spawn's .time file ("-" when absent).
cpu_secs() {
    awk 'NF == 2 { printf "%.3f\n", $1 + $2; found = 1 } END { if (!found) print "-" }' "$1" \
        2>/dev/null || echo "-"
}

# ---- 2. configuration and the two proxies ----------------------------------

SB_IP=127.0.0.41
KAM_IP=127.0.0.42
UAC_IP=127.0.0.43
UAS_IP=127.0.0.44
sb_port="$(free_port)"; picked+="$sb_port "
admin_port="$(free_port)"; picked+="$admin_port "
kam_port="$(free_port)"; picked+="$kam_port "
# One UAC and one UAS port per sipp pair.
# One UAC and one UAS port per sipp pair, and a media (RTP) port for each
# sipp that runs at the same time as others.
uac_ports=() uas_ports=() uac_media=() uas_media=()
for _ in $(seq "$sipp_pairs"); do
    p="$(free_port)"; picked+="$p "; uac_ports+=("$p")
    p="$(free_port)"; picked+="$p "; uas_ports+=("$p")
    p="$(free_port)"; picked+="$p "; uac_media+=("$p")
    p="$(free_port)"; picked+="$p "; uas_media+=("$p")
done
media_port="$(free_port)"; picked+="$media_port "
SB="$SB_IP:$sb_port"
KAM="$KAM_IP:$kam_port"

# Agents: pair k is caller 1kkkk calling callee 2kkkk.
for k in $(seq "$pairs"); do
    for base in 10000 20000; do
        printf '[[agent]]\nbadge = "A%d"\nextension = "%d"\nkind = "agent"\npassword = "caps-%d"\n\n' \
            $((base + k)) $((base + k)) $((base + k))
    done
done >"$work/agents.toml"
# Agent pair k belongs to sipp pair (k - 1) mod SIPP_PAIRS, whose UAC
# calls it and whose UAS answers for it.
for j in $(seq 0 $((sipp_pairs - 1))); do
    own=()
    for k in $(seq "$pairs"); do
        [ $(((k - 1) % sipp_pairs)) = "$j" ] && own+=("$k")
    done
    { echo SEQUENTIAL; for k in "${own[@]}"; do echo "$((10000 + k));"; done; } >"$work/callers-$j.csv"
    { echo SEQUENTIAL; for k in "${own[@]}"; do echo "$((20000 + k));"; done; } >"$work/callees-$j.csv"
    { echo SEQUENTIAL; for k in "${own[@]}"; do echo "$((10000 + k));$((20000 + k));"; done; } \
        >"$work/calls-$j.csv"
done
# Agent pairs of sipp pair J.
pairs_of() { echo $(((pairs - $1 + sipp_pairs - 1) / sipp_pairs)); }

cat >"$work/blade.toml" <<TOML
[blade]
id = "caps-blade"
domain = "cc.example"
sip = "$SB"
cores = $cores
admin = "127.0.0.41:$admin_port"

[agents]
file = "$work/agents.toml"
auth = false
TOML

kam_cfg="$here/kamailio.cfg"
# TLSF memory managers for shared and private memory: Debian's build
# defaults to qm, the debugging manager, which in a side-by-side with
# `sipblade load` (300 calls/s, one worker) doubled Kamailio's CPU per call
# (qm_malloc alone 41% of it). An operator after throughput picks tlsf or fm.
# 512 MB shared and 64 MB private memory per process: with 16 MB private
# memory, one worker answered 500 to 9% of the calls at 2,500/s.
kam_args=(-f "$kam_cfg" -A "CAPS_IP=$KAM_IP" -A "CAPS_PORT=$kam_port"
    -A "CAPS_CHILDREN=$cores" -A "CAPS_TCP_CHILDREN=$cores" -A 'CAPS_ALIAS="cc.example"'
    -m 512 -M 64 -x tlsf -X tlsf)
kamailio -c "${kam_args[@]}" >"$work/kamailio-check.log" 2>&1 || {
    show_logs "$work/kamailio-check.log"
    fail "kamailio -c rejects $kam_cfg"
}

echo "$prog: sipblade $bin on $SB (cores = $cores); kamailio ($kamailio_version) on $KAM" \
    "(children = $cores); UACs $UAC_IP:${uac_ports[*]} (sipp -t $sipp_transport)," \
    "UASs $UAS_IP:${uas_ports[*]}; $pairs pairs;" \
    "$sipp_version" >&2

# sipblade: one process, all its threads.
setsid env RUST_LOG="${RUST_LOG:-warn}" "$bin" run --config "$work/blade.toml" \
    >"$work/sipblade.out" 2>"$work/sipblade.log" &
sb_pid=$!
groups+=("$sb_pid")
# Kamailio in the foreground (-DD) with its children in its process group.
mkdir -p "$work/kamailio"
setsid kamailio -DD -E "${kam_args[@]}" -P "$work/kamailio.pid" -w "$work/kamailio" \
    -Y "$work/kamailio" >"$work/kamailio.log" 2>&1 &
kam_pid=$!
groups+=("$kam_pid")

for _ in $(seq 100); do
    kill -0 "$sb_pid" 2>/dev/null || { show_logs "$work/sipblade.log"; fail "sipblade exited at start"; }
    kill -0 "$kam_pid" 2>/dev/null || { show_logs "$work/kamailio.log"; fail "kamailio exited at start"; }
    if udp_bound "$SB_IP" "$sb_port" && udp_bound "$KAM_IP" "$kam_port"; then
        break
    fi
    sleep 0.1
done
udp_bound "$SB_IP" "$sb_port" || { show_logs "$work/sipblade.log"; fail "sipblade did not bind $SB"; }
udp_bound "$KAM_IP" "$kam_port" || { show_logs "$work/kamailio.log"; fail "kamailio did not bind $KAM"; }
sleep 0.5 # Kamailio's children finish their start-up
read -r _ _ kam_procs _ < <(group_stat "$kam_pid")
read -r _ _ _ sb_threads < <(group_stat "$sb_pid")
echo "$prog: kamailio runs $kam_procs processes, sipblade $sb_threads threads" >&2

cd "$work"
sipp_common=(-nostdin -timeout_error -trace_err -trace_stat -fd 1)

# register PROXY_ADDR WHO IP PORT N: the N agents in $work/WHO.csv from IP:PORT.
register() {
    local proxy="$1" who="$2" ip="$3" port="$4" n="$5" name rc=0
    name="register_${who}_${proxy%%:*}"
    spawn "$name" timeout --foreground -k 5 60 sipp "$proxy" "${sipp_common[@]}" -mp "$media_port" -timeout 45s \
        -sf "$here/sipp/register.xml" -inf "$work/$who.csv" -i "$ip" -p "$port" -mi "$ip" \
        -m "$n" -r 500 -stf "$work/$name.csv" -error_file "$work/$name.err"
    wait "$spawned" || rc=$?
    forget "$spawned"
    if [ "$rc" != 0 ]; then
        show_logs "$work/$name.out" "$work/$name.err" "$work/sipblade.log" "$work/kamailio.log"
        fail "REGISTER of the $who on $proxy failed (sipp exit $rc)"
    fi
}
for proxy in "$SB" "$KAM"; do
    for j in $(seq 0 $((sipp_pairs - 1))); do
        register "$proxy" "callees-$j" "$UAS_IP" "${uas_ports[$j]}" "$(pairs_of "$j")"
        register "$proxy" "callers-$j" "$UAC_IP" "${uac_ports[$j]}" "$(pairs_of "$j")"
    done
done
echo "$prog: $pairs callees and $pairs callers registered on both proxies" >&2

# Idle CPU of each proxy (agents registered, no call), since every phase's
# figure includes some quiet time too.
sleep 0.5
read -r _ sb_i0 _ < <(group_stat "$sb_pid")
read -r _ kam_i0 _ < <(group_stat "$kam_pid")
i0="$(now_ns)"
sleep "$idle_secs"
read -r _ sb_i1 _ < <(group_stat "$sb_pid")
read -r _ kam_i1 _ < <(group_stat "$kam_pid")
i1="$(now_ns)"
sb_idle="$(awk -v a="$sb_i0" -v b="$sb_i1" -v t="$((i1 - i0))" 'BEGIN { printf "%.2f", (b - a) / 1e6 / (t / 1e9) }')"
kam_idle="$(awk -v a="$kam_i0" -v b="$kam_i1" -v t="$((i1 - i0))" 'BEGIN { printf "%.2f", (b - a) / 1e6 / (t / 1e9) }')"
echo "$prog: idle CPU over ${idle_secs} s (schedstat): sipblade $sb_idle ms/s, kamailio $kam_idle ms/s" >&2

# ---- 3. the phases ----------------------------------------------------------

raw="$work/raw.tsv"
printf 'proxy\tscenario\trate\tcalls\tuac_ok\tuac_failed\tuas_ok\tuas_failed\tuac_rc\tuas_rc\tproxy_ticks\tproxy_ns\twall_ns\tuac_cpu_s\tuas_cpu_s\trtt_dir\n' >"$raw"
idx=0
# share N J: sipp pair J's part of N calls.
share() { echo $(($1 / sipp_pairs + ($2 < $1 % sipp_pairs ? 1 : 0))); }
# sum_counts DIR SIDE: "ok failed" over the sipp pairs' final counts
# ("? ?" if any is unknown).
sum_counts() {
    local j ok=0 ko=0 a b
    for j in $(seq 0 $((sipp_pairs - 1))); do
        read -r a b < <(final_counts "$1/$2-$j.csv")
        [[ "$a$b" =~ ^[0-9]+$ ]] || { echo "? ?"; return; }
        ok=$((ok + a)) ko=$((ko + b))
    done
    echo "$ok $ko"
}
# sum_cpu DIR SIDE: the sipp pairs' user + system seconds ("-" if unknown).
sum_cpu() {
    local j total=0 c
    for j in $(seq 0 $((sipp_pairs - 1))); do
        c="$(cpu_secs "$1/$2-$j.time")"
        [ "$c" = "-" ] && { echo "-"; return; }
        total="$(awk -v a="$total" -v b="$c" 'BEGIN { printf "%.3f", a + b }')"
    done
    echo "$total"
}
# run_phase PROXY_NAME SCENARIO RATE CALLS
run_phase() {
    local name="$1" scen="$2" rate="$3" n="$4" target pg
    case "$name" in
        sipblade) target="$SB" pg="$sb_pid" ;;
        kamailio) target="$KAM" pg="$kam_pid" ;;
    esac
    idx=$((idx + 1))
    local tag dir limit uas uac uac_rc=0 uas_rc=0 t0 t1 c0t c0n c1t c1n
    tag="$(printf '%02d' "$idx")_${name}_${scen}_$rate"
    dir="$work/$tag"
    mkdir -p "$dir"
    # sipp's own global timeout: twice the nominal duration plus 20 s.
    limit=$((2 * n / rate + 20))
    kill -0 "$pg" 2>/dev/null || fail "$name is not running any more"
    # The previous phase's sipp instances must have let go of their ports.
    local j uacs=() uass=() rc
    for j in $(seq 0 $((sipp_pairs - 1))); do
        port_free "$UAS_IP" "${uas_ports[$j]}" || fail "the UAS port $UAS_IP:${uas_ports[$j]} is still in use"
        port_free "$UAC_IP" "${uac_ports[$j]}" || fail "the UAC port $UAC_IP:${uac_ports[$j]} is still in use"
    done
    for j in $(seq 0 $((sipp_pairs - 1))); do
        spawn "$tag/uas-$j" timeout --foreground -k 5 $((limit + 20)) sipp "$target" "${sipp_common[@]}" \
            -timeout "${limit}s" -sf "$here/sipp/uas_$scen.xml" -i "$UAS_IP" -p "${uas_ports[$j]}" \
            -mi "$UAS_IP" -mp "${uas_media[$j]}" -m "$(share "$n" "$j")" -stf "$dir/uas-$j.csv" \
            -error_file "$dir/uas-$j.err"
        uass+=("$spawned")
    done
    for j in $(seq 0 $((sipp_pairs - 1))); do
        for _ in $(seq 100); do
            udp_bound "$UAS_IP" "${uas_ports[$j]}" && break
            kill -0 "${uass[$j]}" 2>/dev/null || break
            sleep 0.05
        done
        udp_bound "$UAS_IP" "${uas_ports[$j]}" || { show_logs "$dir/uas-$j.out"; fail "a UAS did not start"; }
    done
    read -r c0t c0n _ < <(group_stat "$pg")
    t0="$(now_ns)"
    cd "$dir" # sipp writes its -trace_rtt file in its working directory
    for j in $(seq 0 $((sipp_pairs - 1))); do
        # Each UAC places its share of the calls at its share of the rate:
        # RATE calls per SIPP_PAIRS seconds (-r / -rp).
        spawn "$tag/uac-$j" timeout --foreground -k 5 $((limit + 20)) sipp "$target" "${sipp_common[@]}" \
            -timeout "${limit}s" -sf "$here/sipp/uac_$scen.xml" -inf "$work/calls-$j.csv" \
            -t "$sipp_transport" ${per_call_sockets:+-max_socket $(($(pairs_of "$j") + 64))} \
            -i "$UAC_IP" -p "${uac_ports[$j]}" -mi "$UAC_IP" -mp "${uac_media[$j]}" \
            -m "$(share "$n" "$j")" -r "$rate" -rp $((1000 * sipp_pairs)) -d "$hold_ms" \
            -l "$(pairs_of "$j")" -trace_rtt -rtt_freq 1 -stf "$dir/uac-$j.csv" \
            -error_file "$dir/uac-$j.err"
        uacs+=("$spawned")
    done
    cd "$work"
    for j in $(seq 0 $((sipp_pairs - 1))); do
        rc=0
        wait "${uacs[$j]}" || rc=$?
        forget "${uacs[$j]}"
        [ "$uac_rc" != 0 ] || uac_rc=$rc
    done
    t1="$(now_ns)"
    read -r c1t c1n _ < <(group_stat "$pg")
    for j in $(seq 0 $((sipp_pairs - 1))); do
        if [ "$uac_rc" != 0 ]; then
            # Calls failed: a UAS may never see them all. Give it 3 s to
            # end on its own, then stop it (the whole group: wrapper,
            # timeout, sipp).
            for _ in $(seq 30); do
                kill -0 "${uass[$j]}" 2>/dev/null || break
                sleep 0.1
            done
            stop_group "${uass[$j]}"
        fi
        rc=0
        wait "${uass[$j]}" || rc=$?
        forget "${uass[$j]}"
        [ "$uas_rc" != 0 ] || uas_rc=$rc
    done
    local uac_ok uac_ko uas_ok uas_ko
    read -r uac_ok uac_ko < <(sum_counts "$dir" uac)
    read -r uas_ok uas_ko < <(sum_counts "$dir" uas)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$name" "$scen" "$rate" "$n" "$uac_ok" "$uac_ko" "$uas_ok" "$uas_ko" "$uac_rc" "$uas_rc" \
        "$((c1t - c0t))" "$((c1n - c0n))" "$((t1 - t0))" \
        "$(sum_cpu "$dir" uac)" "$(sum_cpu "$dir" uas)" "$dir" >>"$raw"
    echo "$prog: $tag: UAC ok $uac_ok failed $uac_ko (exit $uac_rc), UAS ok $uas_ok" \
        "failed $uas_ko (exit $uas_rc), proxy CPU $(((c1n - c0n) / 1000000)) ms," \
        "$(((t1 - t0) / 1000000)) ms" >&2
    if [ "$uac_rc" != 0 ] || [ "$uas_rc" != 0 ]; then
        show_logs "$dir"/uac-*.err "$dir"/uas-*.err
    fi
}

order=(sipblade kamailio)
for rate in $rates; do
    for name in "${order[@]}"; do
        run_phase "$name" call "$rate" "$calls"
    done
    order=("${order[1]}" "${order[0]}")
done
for scen in busy cancel; do
    for name in "${order[@]}"; do
        run_phase "$name" "$scen" "$extra_rate" "$extra_calls"
    done
    order=("${order[1]}" "${order[0]}")
done

# sipblade's own view at the end: no session left, every agent ready, no
# message found malformed (Kamailio keeps no such state to look at).
http_get() { # GET $1 from sipblade's admin port: headers and body
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.41/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.41\r\nConnection: close\r\n\r\n" "$2" >&3
        cat <&3' _ "$admin_port" "$1"
}
count() { # count PATTERN TEXT: occurrences of the grep pattern in the text
    { grep -o "$1" <<<"$2" || true; } | wc -l
}
sb_clean=""
sb_end="?"
for _ in $(seq 30); do
    status="$(http_get /status 2>/dev/null | sed -n '/^{/p')" || status=""
    if [ -n "$status" ]; then
        sessions="$(count '"call_id"' "$status")"
        busy_agents="$(count '"state":"\(in_call\|hosted\)"' "$status")"
        ready="$(count '"state":"ready"' "$status")"
        sb_end="$sessions sessions, $busy_agents agents in a call, $ready of $((2 * pairs)) ready"
        if [ "$sessions" = 0 ] && [ "$busy_agents" = 0 ] && [ "$ready" = $((2 * pairs)) ]; then
            sb_clean=1
            break
        fi
    fi
    sleep 0.1
done
metrics="$(http_get /metrics 2>/dev/null)" || metrics=""
metric() { # metric NAME: its value in $metrics, or ?
    awk -v name="$1" '$1 == name { v = $2 + 0; found = 1 } END { print found ? v : "?" }' <<<"$metrics"
}
malformed="$(metric sipblade_messages_malformed_total)"
handoffs="$(metric sipblade_core_handoffs_total)"
echo "$prog: sipblade at the end: $sb_end; malformed messages $malformed;" \
    "messages handed from core to core $handoffs" >&2

# ---- 4. the report ------------------------------------------------------------

mkdir -p "$out"
report_rc=0
python3 "$here/report.py" --raw "$raw" --out "$out" --tck "$(getconf CLK_TCK)" \
    --meta "mode=$([ -n "$smoke" ] && echo smoke || echo full)" \
    --meta "cores=$cores" --meta "pairs=$pairs" --meta "hold_ms=$hold_ms" \
    --meta "sipp_pairs=$sipp_pairs" --meta "sipp_transport=$sipp_transport" \
    --meta "kamailio=$kamailio_version" --meta "kamailio_processes=$kam_procs" \
    --meta "sipblade_threads=$sb_threads" --meta "sipp=$sipp_version" \
    --meta "idle_ms_per_s.sipblade=$sb_idle" --meta "idle_ms_per_s.kamailio=$kam_idle" \
    --meta "sipblade_end_state=$sb_end" --meta "sipblade_malformed=$malformed" \
    --meta "sipblade=$bin" --meta "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" \
    --meta "nproc=$(nproc)" --meta "kernel=$(uname -r)" \
    --meta "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" \
    --meta "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    ${smoke:+--strict} || report_rc=$?
if [ "$report_rc" != 0 ]; then
    [ -n "$smoke" ] && fail "not every call succeeded on both proxies (see above)"
    fail "report.py failed (exit $report_rc)"
fi
if [ -n "$smoke" ]; then
    [ -n "$sb_clean" ] || fail "sipblade did not end clean: $sb_end"
    [ "$malformed" = 0 ] || fail "sipblade found $malformed of sipp's messages malformed"
fi
echo "$prog: results in $out (results.json, results.tsv, table.md, caps.svg, cpu.svg)" >&2
[ -n "$smoke" ] && echo "$prog: smoke OK"
exit 0
