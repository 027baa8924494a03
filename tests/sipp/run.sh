#!/usr/bin/env bash
# Interop test: real sipp (Debian's sip-tester) against one sipblade.
#
#   tests/sipp/run.sh [SIPBLADE_BINARY]
#
# Without an argument, $SIPBLADE_BIN or target/{release,debug}/sipblade.
# Everything runs on loopback: the blade on 127.0.0.1, the called agents'
# terminal (a sipp UAS) on 127.0.0.3, the calling agents' terminal (a sipp
# UAC) on 127.0.0.2, each on a free port. The blade runs with auth = false
# (SPEC §5; SIPP_AUTH=1 below for digest): callers and callees must be
# registered (logged in) before calls are placed. PAIRS caller/callee pairs of agents
# (1001→1002, 1003→1004, …, from agents.toml) call at once, because an
# agent takes one call at a time (another INVITE to it gets 486):
#
#   1. register.xml -i 127.0.0.3 -p UAS_PORT -m PAIRS  (callees, then exits)
#   2. uas.xml      -i 127.0.0.3 -p UAS_PORT -m CALLS  (background)
#   3. register.xml -i 127.0.0.2 -p UAC_PORT -m PAIRS  (callers, then exits)
#   4. uac.xml      -i 127.0.0.2 -p UAC_PORT -m CALLS -users PAIRS
#
# Each registration run uses the very ip:port that the UAS / UAC then
# binds, so every registered Contact is where that sipp instance listens.
# The UAC runs PAIRS sipp "users", each bound to one line (one pair) of the
# injection file and placing its next call when its last one ended.
# The load is bounded: CALLS calls (default 50), PAIRS (default 5) at
# once, a sipp global timeout and a `timeout` around every process. Exit 0
# only when every call succeeded on both sides, the blade counted them all
# answered, and /status shows every agent ready and no session left.
# SIPP_CALLS and SIPP_PAIRS (1 to 5) override the defaults; SIPP_KEEP=1
# keeps the work directory with the logs. SIPP_TRANSPORT=t1 runs it all
# over TCP (one connection per sipp): each sipp registers over a
# connection that closes when it exits, so the blade reaches the callees
# by connecting to their Contact, where the UAS listens; SIPP_TRANSPORT=tn
# gives the callers a connection per call instead (see common.sh).
# SIPP_AUTH=1 runs
# the blade with auth = true: the REGISTERs (register_auth.xml) answer a
# 401 and the INVITEs (uac_auth.xml) a 407 with sipp's own digest, from
# the passwords in agents.toml. SIPP_FLOW=dialog makes each call a whole
# dialog (uac_dialog.xml, uas_dialog.xml: a reliable 183 and its PRACK,
# re-INVITE, INFO, UPDATE, the callee's BYE). SIPP_LOST=N (0 to 50) makes
# the UAC and the UAS each drop N% of the calls' messages (sipp -lost), on
# loss-tolerant copies of the scenarios (uac_loss.xml, uas_loss.xml): the
# blade's retransmission timers must recover every call.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
. "$here/common.sh"

calls="${SIPP_CALLS:-50}"
cores="${SIPP_CORES:-2}"
pairs="${SIPP_PAIRS:-5}"
sipp_timeout=60 # sipp's own global timeout for the calls, seconds
hard_timeout=90 # `timeout` around the UAS and the UAC, seconds

fail() {
    echo "sipp interop: FAIL: $*" >&2
    exit 1
}

[[ "$calls" =~ ^[1-9][0-9]*$ ]] || fail "SIPP_CALLS must be a positive number"
[[ "$pairs" =~ ^[1-5]$ ]] || fail "SIPP_PAIRS must be 1 to 5 (agents.toml has 5 pairs)"
sipp_variant

bin="${1:-${SIPBLADE_BIN:-}}"
if [ -z "$bin" ]; then
    for candidate in "$root/target/release/sipblade" "$root/target/debug/sipblade"; do
        if [ -x "$candidate" ]; then
            bin="$candidate"
            break
        fi
    done
fi
[ -n "$bin" ] && [ -x "$bin" ] || fail "no sipblade binary (pass its path, or cargo build --release)"
command -v sipp >/dev/null 2>&1 || fail "sipp not installed (apt-get install sip-tester)"

work="$(mktemp -d "${TMPDIR:-/tmp}/sipblade-sipp.XXXXXX")"
pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" != 0 ] || [ -n "${SIPP_KEEP:-}" ]; then
        echo "sipp interop: logs kept in $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# GET $1 from the admin port; the response (headers and body) on stdout.
http_get() {
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "$2" >&3
        cat <&3' _ "$admin_port" "$1"
}

# free_port runs in a subshell: pass it what was picked so far.
sip_port="$(free_port)"; picked+="$sip_port "
admin_port="$(free_port)"; picked+="$admin_port "
uas_port="$(free_port)"; picked+="$uas_port "
uac_port="$(free_port)"; picked+="$uac_port "
media_port="$(free_port)"

injection_files "$work" "$pairs"

cat >"$work/blade.toml" <<TOML
[blade]
id = "sipp-blade"
domain = "cc.example"
sip = "127.0.0.1:$sip_port"
cores = $cores
admin = "127.0.0.1:$admin_port"

[agents]
file = "$here/agents.toml"
auth = $auth_setting
TOML

echo "sipp interop: blade $bin on 127.0.0.1:$sip_port (admin $admin_port)," \
    "UAS 127.0.0.3:$uas_port, UAC 127.0.0.2:$uac_port: $calls calls, $pairs at once, sipp -t $transport, auth = $auth_setting"

RUST_LOG="${RUST_LOG:-warn}" "$bin" run --config "$work/blade.toml" \
    >"$work/blade.out" 2>"$work/blade.log" &
blade_pid=$!
pids+=("$blade_pid")
up=""
for _ in $(seq 100); do
    kill -0 "$blade_pid" 2>/dev/null || {
        cat "$work/blade.log" >&2
        fail "blade exited at start"
    }
    if http_get /status 2>/dev/null | grep -q '"blade":"sipp-blade"'; then
        up=1
        break
    fi
    sleep 0.1
done
[ -n "$up" ] || {
    cat "$work/blade.log" >&2
    fail "blade did not answer /status"
}

# CPU the blade has used so far, in ns, over all its threads (schedstat).
blade_cpu_ns() {
    local total=0 ns
    for f in /proc/"$blade_pid"/task/*/schedstat; do
        read -r ns _ <"$f" 2>/dev/null || continue
        total=$((total + ns))
    done
    echo "$total"
}
cpu_before="$(blade_cpu_ns)"

cd "$work"
# Every sipp: no stdin, statistics (CSV, final screen, errors) in $work,
# the media port away from sipp's default 6000 (shared by parallel runs).
sipp_common=(127.0.0.1:"$sip_port" -nostdin -timeout_error -mp "$media_port"
    -trace_err -trace_screen -trace_stat -fd 1)


show_logs() {
    local f
    for f in "$@"; do
        if [ -s "$work/$f" ]; then
            echo "---- $f (last 40 lines)" >&2
            tail -n 40 "$work/$f" >&2
            echo >&2
        fi
    done
}

# Registers the agents listed in $1.csv from $2:$3, expecting 200 each.
register() {
    local who="$1" ip="$2" port="$3" rc=0
    local -n transport_args="${who%s}_transport_args"
    timeout 30 sipp "${sipp_common[@]}" "${transport_args[@]}" -timeout 20s -sf "$here/$register_scenario" \
        -inf "$work/$who.csv" -i "$ip" -p "$port" -mi "$ip" -m "$pairs" -r 50 \
        -stf "$work/register_$who.csv" -error_file "$work/register_$who.err" \
        -screen_file "$work/register_$who.screen" >"$work/register_$who.out" 2>&1 || rc=$?
    if [ "$rc" != 0 ]; then
        show_logs "register_$who.screen" "register_$who.err" blade.log
        fail "REGISTER of the $who failed (sipp exit $rc)"
    fi
}


register callees 127.0.0.3 "$uas_port"

uas_rc=0
timeout "$hard_timeout" sipp "${sipp_common[@]}" "${callee_transport_args[@]}" \
    -timeout "${sipp_timeout}s" "${uas_args[@]}" -i 127.0.0.3 -p "$uas_port" -mi 127.0.0.3 -m "$calls" \
    -stf "$work/uas.csv" -error_file "$work/uas.err" -screen_file "$work/uas.screen" \
    >"$work/uas.out" 2>&1 &
uas_pid=$!
pids+=("$uas_pid")
for _ in $(seq 100); do
    uas_ready 127.0.0.3 "$uas_port" && break
    kill -0 "$uas_pid" 2>/dev/null || break
    sleep 0.05
done
uas_ready 127.0.0.3 "$uas_port" || {
    show_logs uas.out uas.err
    fail "the UAS did not start"
}

register callers 127.0.0.2 "$uac_port"

uac_rc=0
timeout "$hard_timeout" sipp "${sipp_common[@]}" "${caller_transport_args[@]}" \
    -timeout "${sipp_timeout}s" -sf "$here/$uac_scenario" -inf "$work/calls.csv" -i 127.0.0.2 -p "$uac_port" -mi 127.0.0.2 \
    -m "$calls" -users "$pairs" "${lost_args[@]}" \
    -stf "$work/uac.csv" -error_file "$work/uac.err" -screen_file "$work/uac.screen" \
    >"$work/uac.out" 2>&1 || uac_rc=$?
if [ "$uac_rc" != 0 ]; then
    # Calls failed: the UAS will never see them all; stop waiting for it.
    kill "$uas_pid" 2>/dev/null || true
    wait "$uas_pid" || true
    uas_rc="stopped"
else
    wait "$uas_pid" || uas_rc=$?
fi
pids=("$blade_pid") # the UAS is reaped: its pid must not be killed again

cpu_after="$(blade_cpu_ns)"
read -r uac_ok uac_failed < <(final_counts "$work/uac.csv")
read -r uas_ok uas_failed < <(final_counts "$work/uas.csv")
echo "sipp interop: UAC: successful calls $uac_ok, failed calls $uac_failed (sipp exit $uac_rc)"
echo "sipp interop: UAS: successful calls $uas_ok, failed calls $uas_failed (sipp exit $uas_rc)"
if [ "$uac_rc" != 0 ] || [ "$uas_rc" != 0 ] || [ "$uac_ok" != "$calls" ] ||
    [ "$uas_ok" != "$calls" ] || [ "$uac_failed" != 0 ] || [ "$uas_failed" != 0 ]; then
    show_logs uac.screen uac.err uas.screen uas.err blade.log
    fail "not every call succeeded"
fi

# The blade's view: every call answered, every agent ready, no session.
metrics="$(http_get /metrics)" || fail "GET /metrics failed"
answered="$(awk '/^sipblade_calls_total\{outcome="answered"/ { n += $2 } END { print n + 0 }' <<<"$metrics")"
counter() { awk -v n="$1" '$1 == n { print $2 + 0 }' <<<"$metrics"; }
malformed="$(counter sipblade_messages_malformed_total)"
echo "sipp interop: blade: answered calls $answered, malformed messages ${malformed:-?}"
# Registration included; a rough figure (sipp shares the cores), for trends.
echo "sipp interop: blade CPU: $(((cpu_after - cpu_before) / 1000000)) ms for $calls calls" \
    "($(((cpu_after - cpu_before) / calls / 1000)) us per call, cores = $cores)"
[ "$answered" = "$calls" ] || fail "the blade counted $answered answered calls, expected $calls"
[ "$malformed" = 0 ] || fail "the blade found $malformed of sipp's messages malformed"

status=""
status_ok() {
    local agent ext
    status="$(http_get /status)" || return 1
    grep -q '"sessions":\[\]' <<<"$status" || return 1
    for ext in $(seq 1001 $((1000 + 2 * pairs))); do
        agent="$(grep -o '{"badge":[^{}]*}' <<<"$status" | grep "\"extension\":\"$ext\"")" || return 1
        grep -q '"state":"ready"' <<<"$agent" || return 1
    done
}
ok=""
for _ in $(seq 20); do
    if status_ok; then
        ok=1
        break
    fi
    sleep 0.1
done
echo "sipp interop: /status: $(sed -n '/^{/p' <<<"$status")"
[ -n "$ok" ] || fail "/status does not show every agent ready with no session left"
echo "sipp interop: OK"
