#!/usr/bin/env bash
# Interop test across two blades: real sipp (Debian's sip-tester) calling
# from agents registered on blade-1 to agents registered on blade-2, two
# real `sipblade run` processes linked over QUIC (SPEC §2, §4).
#
#   tests/sipp/cross.sh [SIPBLADE_BINARY]
#
# Without an argument, $SIPBLADE_BIN or target/{release,debug}/sipblade.
# Everything runs on loopback:
#
#   blade-1 (source)  127.0.0.21  SIP, QUIC, admin each on a free port
#   blade-2 (target)  127.0.0.22  likewise
#   UAC (callers)     127.0.0.2   registered on blade-1, calls via blade-1
#   UAS (callees)     127.0.0.3   registered on blade-2
#
# Certificates come from `sipblade certs --dir WORK/certs --blades
# blade-1,blade-2`; each blade's [cluster] lists the other as its peer
# (lease_secs = 30), auth = false (SIPP_AUTH below). The script waits until each blade's
# /status shows its peer up, then, with the agents of agents.toml (pair k:
# caller 1000+2k-1 calls callee 1000+2k):
#
#   1. register.xml -i 127.0.0.3 -p UAS_PORT -m PAIRS  to blade-2 (callees)
#   2. uas.xml      -i 127.0.0.3 -p UAS_PORT -m CALLS  (background)
#   3. register.xml -i 127.0.0.2 -p UAC_PORT -m PAIRS  to blade-1 (callers)
#   4. uac.xml      -i 127.0.0.2 -p UAC_PORT -m CALLS -users PAIRS  via blade-1
#
# Every call is cross-blade: blade-1 hosts the callee from blade-2 for the
# call and hands it back after the BYE. Exit 0 only when every call
# succeeded on both sipp sides, blade-1 counted exactly CALLS answered
# cross-blade calls (sipblade_calls_total{outcome="answered",
# route="cross_blade"}), and both blades' /status show no session and every
# agent ready (none left hosted or in_call). Bounded: CALLS calls (default
# 50), PAIRS (default 5) at once, sipp's global timeout and a `timeout`
# around every sipp; the EXIT trap kills every process it started.
# SIPP_CALLS, SIPP_PAIRS (1 to 5), SIPP_CORES (per blade, default 2)
# override the defaults; SIPP_TRANSPORT=t1 runs the agents' side over TCP
# (the blades still talk UDP); SIPP_AUTH=1 runs both blades with auth =
# true, the agents answering with sipp's digest (blade-2 trusts blade-1's
# INVITEs by their hosting token alone); SIPP_FLOW=dialog makes each call
# a whole dialog (uac_dialog.xml, uas_dialog.xml: a reliable 183 and its
# PRACK, re-INVITE, INFO, UPDATE, the callee's BYE, all across both
# blades); SIPP_LOST=N drops N% of the calls' messages at both sipps
# (run.sh); SIPP_KEEP=1 keeps the work directory with the logs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
prog="sipp cross-blade"
# shellcheck source=lib.sh
. "$here/lib.sh"

calls="${SIPP_CALLS:-50}"
pairs="${SIPP_PAIRS:-5}"
sipp_timeout=60 # sipp's own global timeout for the calls, seconds
hard_timeout=90 # `timeout` around the UAC, seconds

[[ "$calls" =~ ^[1-9][0-9]*$ ]] || fail "SIPP_CALLS must be a positive number"
[[ "$pairs" =~ ^[1-5]$ ]] || fail "SIPP_PAIRS must be 1 to 5 (agents.toml has 5 pairs)"

lib_init "${1:-}"

uas_ip=127.0.0.3
uac_ip=127.0.0.2
uas_port="$(free_port)"; picked+="$uas_port "
uac_port="$(free_port)"; picked+="$uac_port "
media_port="$(free_port)"; picked+="$media_port "

injection_files "$work" "$pairs"

cluster_start "$here/agents.toml"
echo "$prog: UAC $uac_ip:$uac_port (callers, on blade-1), UAS $uas_ip:$uas_port" \
    "(callees, on blade-2): $calls calls, $pairs at once"

cd "$work"
register callees "$uas_ip" "$uas_port" "$B2_SIP" "$pairs"
uas_start uas "$uas_ip" "$uas_port" "$B2_SIP" "$calls" "$sipp_timeout"
register callers "$uac_ip" "$uac_port" "$B1_SIP" "$pairs"

uac_rc=0
timeout "$hard_timeout" sipp "$B1_SIP" "${caller_transport_args[@]}" -nostdin -timeout_error -mp "$media_port" \
    -trace_err -trace_screen -trace_stat -fd 1 -timeout "${sipp_timeout}s" \
    -sf "$here/$uac_scenario" -inf "$work/calls.csv" -i "$uac_ip" -p "$uac_port" -mi "$uac_ip" \
    -m "$calls" -users "$pairs" "${lost_args[@]}" \
    -stf "$work/uac.csv" -error_file "$work/uac.err" -screen_file "$work/uac.screen" \
    >"$work/uac.out" 2>&1 || uac_rc=$?
uas_rc=0
if [ "$uac_rc" != 0 ]; then
    # Calls failed: the UAS will never see them all; stop waiting for it.
    kill "$uas_pid" 2>/dev/null || true
    wait "$uas_pid" || true
    uas_rc="stopped"
else
    wait "$uas_pid" || uas_rc=$?
fi
pids=("$b1_pid" "$b2_pid") # the UAS is reaped: its pid must not be killed again

read -r uac_ok uac_failed < <(final_counts "$work/uac.csv")
read -r uas_ok uas_failed < <(final_counts "$work/uas.csv")
echo "$prog: UAC: successful calls $uac_ok, failed calls $uac_failed (sipp exit $uac_rc)"
echo "$prog: UAS: successful calls $uas_ok, failed calls $uas_failed (sipp exit $uas_rc)"
if [ "$uac_rc" != 0 ] || [ "$uas_rc" != 0 ] || [ "$uac_ok" != "$calls" ] ||
    [ "$uas_ok" != "$calls" ] || [ "$uac_failed" != 0 ] || [ "$uas_failed" != 0 ]; then
    show_logs uac.screen uac.err uas.screen uas.err blade-1.log blade-2.log
    echo "$prog: blade-1 /status: $(status_json "$B1_ADMIN" 2>/dev/null)" >&2
    echo "$prog: blade-2 /status: $(status_json "$B2_ADMIN" 2>/dev/null)" >&2
    fail "not every call succeeded"
fi

# Blade-1's view: every call answered, and as a cross-blade call.
m1="$(http_get "$B1_ADMIN" /metrics)" || fail "GET /metrics of blade-1 failed"
m2="$(http_get "$B2_ADMIN" /metrics)" || fail "GET /metrics of blade-2 failed"
cross="$(metric 'sipblade_calls_total{outcome="answered",route="cross_blade"}' "$m1")"
local_calls="$(metric 'sipblade_calls_total{outcome="answered",route="local"}' "$m1")"
rtt_count="$(metric sipblade_hosting_rtt_seconds_count "$m1")"
rtt_sum="$(metric sipblade_hosting_rtt_seconds_sum "$m1")"
malformed_1="$(metric sipblade_messages_malformed_total "$m1")"
malformed_2="$(metric sipblade_messages_malformed_total "$m2")"
echo "$prog: blade-1: answered cross-blade calls ${cross:-?}, answered local calls" \
    "${local_calls:-?}, hosting round trips ${rtt_count:-?} (sum ${rtt_sum:-?} s)," \
    "malformed messages ${malformed_1:-?}; blade-2: malformed messages ${malformed_2:-?}"
[ "$cross" = "$calls" ] ||
    fail "blade-1 counted ${cross:-no} answered cross-blade calls, expected $calls"
[ "$malformed_1" = 0 ] && [ "$malformed_2" = 0 ] ||
    fail "a blade found some of sipp's messages malformed"

# Both blades: no session left, no agent hosted or in a call, and every
# agent ready on the blade it is registered on (the callers on blade-1,
# the callees on blade-2).
mapfile -t caller_exts < <(seq 1001 2 $((999 + 2 * pairs)))
mapfile -t callee_exts < <(seq 1002 2 $((1000 + 2 * pairs)))
s1="" s2="" ok=""
for _ in $(seq 50); do
    s1="$(status_json "$B1_ADMIN" 2>/dev/null)" || s1=""
    s2="$(status_json "$B2_ADMIN" 2>/dev/null)" || s2=""
    if all_ready "$s1" "${caller_exts[@]}" && all_ready "$s2" "${callee_exts[@]}"; then
        ok=1
        break
    fi
    sleep 0.1
done
echo "$prog: blade-1 /status: $s1"
echo "$prog: blade-2 /status: $s2"
[ -n "$ok" ] || fail "/status does not show every agent ready (none hosted or in_call) with no session left on both blades"
echo "$prog: OK"
