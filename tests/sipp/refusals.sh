#!/usr/bin/env bash
# Refusals through real sipp (Debian's sip-tester): every call that must
# NOT connect, and the health check, against `sipblade run --config FILE`
# processes configured as SPEC §4 says, with exact statuses (SPEC §2, §5).
#
#   tests/sipp/refusals.sh [SIPBLADE_BINARY]
#
# Without an argument, $SIPBLADE_BIN or target/{release,debug}/sipblade.
# SIPP_REFUSALS picks the parts, separated by commas, run in that order:
# one (one blade, auth = false), auth (one blade, auth = true), cross (two
# blades over QUIC, auth = false), crossauth (two blades, auth = true);
# all (the default) is one,auth,cross,crossauth. SIPP_KEEP=1 keeps the work
# directory with every sipp's messages (NAME.msg) and the blades' logs.
# SIPP_TRANSPORT=t1 runs every sipp over TCP (one connection each; the
# blades reach the phones by connecting to their Contact, and each other
# over UDP as before).
#
# Everything runs on loopback in 127.0.24.0/24; every agent's terminal is
# a sipp bound to an address of its own, registered (register*.xml) from
# the very ip:port that its sipp then binds, so the Contact is where it
# listens. The agents (agents.toml, written here) are 20xx, password
# sipp-EXT; 9999 is no agent at all.
#
# one: the blade on 127.0.24.1.
#   OPTIONS sip:IP:PORT and OPTIONS sip:cc.example    200
#   2001 -> 9999 (unknown extension)                  404
#   2001 -> 2009 (provisioned, not registered)        480
#   2009 (not logged in) -> 2002                      403
#   2001 -> 2002 answered and held; 2003 -> 2002      486
#   2001 -> 2004, CANCEL on the 180                   200 to the CANCEL, 487
#   2001 -> 2005, the phone declines                  603, then 486 Busy Here
# auth: the blade on 127.0.24.2 with auth = true.
#   OPTIONS sip:IP:PORT                               200 (no challenge)
#   2011 -> 2012 (uac_auth.xml)                       407, then 180 200
#   2011 -> 2012, CANCEL (no credentials) on the 180  407, 180, 200, 487
#   2013 (provisioned, not logged in) -> 2012         407, then 403
#   2011 with a wrong password -> 2012                407, then 403
#   2011 -> 9999                                      407, then 404
#   REGISTER 2014 with a wrong password               401, then 403
#   REGISTER 2011 (logged in) with a wrong password,
#   from elsewhere                                    401, then 403, and
#                                                     2011's contact kept
# cross: blade-1 (S) on 127.0.24.3, blade-2 (T) on 127.0.24.4, each the
# other's peer, certificates from `sipblade certs`. Callers 2021 and 2023
# register on S, callees 2022, 2024, 2025 and the caller 2026 on T.
#   OPTIONS to each blade                             200
#   2021 -> 9999                                      404
#   2021 -> 2029 (provisioned, registered nowhere)    480
#   2027 logs in on T, then out (refusal_logout.xml); 2021 -> 2027: 480
#   2021 -> 2024 on T, CANCEL on the 180              200 to the CANCEL, 487
#   2021 -> 2025 on T, the phone declines             603, then 486 Busy Here
#   2021 -> 2022 on T answered and held (S hosts 2022):
#     2023 on S -> 2022                               486
#     2026 on T -> 2022 (T hands it to S, SPEC §2.6)  486
#     2026 on T -> 2021 (the caller, on S)            486
#     (S's /status lists the session, 2022 hosted; T shows 2022 hosted
#     by blade-1)
#   2026 -> 2022, both on T, answered and held:
#     2021 on S -> 2022 (T refuses the hosting)       486
#   After each cross-blade call T shows the callee ready, not hosted.
# crossauth: the same two blades with auth = true; every INVITE to S is
# challenged 407 first, then sent with sipp's digest (refusal_uac_auth.xml):
#   2021 -> 9999                                      404
#   2021 -> 2029                                      480
#   2021 -> 2025 on T, the phone declines             603
#   2021 -> 2024 on T, CANCEL on the 180              200 to the CANCEL, 487
#   2021 (logged in on S) -> 2022, sent to T          403 (not logged in there)
#
# Every sipp runs one call (-m 1), under its own -timeout and a `timeout`,
# with -timeout_error, and its scenario expects the exact statuses, none
# of them optional: a wrong status fails the sipp, and the script. Each
# part ends with /status showing no session, every registered agent ready
# on its blade (none hosted or in a call) and, across blades, each peer up.
# The EXIT trap kills every process started here.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
prog="sipp refusals"
# shellcheck source=lib.sh
. "$here/lib.sh"
# lib.sh's cluster_start runs its blades on these.
B1_IP=127.0.24.3
B2_IP=127.0.24.4

part="${SIPP_REFUSALS:-all}"
[ "$part" != all ] || part=one,auth,cross,crossauth
[[ "$part" =~ ^(one|auth|cross|crossauth)(,(one|auth|cross|crossauth))*$ ]] ||
    fail "SIPP_REFUSALS must be all, or parts (one, auth, cross, crossauth) separated by commas"
# lib.sh read SIPP_TRANSPORT (common.sh's sipp_variant): u1 or t1 here.
[ "$transport" != tn ] || fail "SIPP_TRANSPORT must be u1 (UDP) or t1 (TCP, one connection per sipp)"
hold_ms=3000 # how long a held call keeps its callee busy

lib_init "${1:-}"
media_port="$(free_port)"
picked+="$media_port "

agents="$work/agents.toml"
{
    echo "# Written by tests/sipp/refusals.sh."
    for ext in 2001 2002 2003 2004 2005 2009 2011 2012 2013 2014 \
        2021 2022 2023 2024 2025 2026 2027 2029; do
        printf '[[agent]]\nbadge = "A%s"\nextension = "%s"\nkind = "agent"\npassword = "sipp-%s"\n\n' \
            "$ext" "$ext" "$ext"
    done
} >"$agents"

# The ip:port of each agent's terminal: `addr EXT` sets ip and port (the
# agent 20xy on 127.0.24.(10 + 10x + y), a port picked once per agent).
declare -A port_of
addr() {
    local ext="$1"
    ip="127.0.24.$((10 + 10#${ext:2:1} * 10 + 10#${ext:3:1}))"
    if [ -z "${port_of[$ext]:-}" ]; then
        port_of[$ext]="$(free_port)"
        picked+="${port_of[$ext]} "
    fi
    port="${port_of[$ext]}"
}

# One blade without [cluster]: blade_start NAME IP AUTH. Sets NAME_sip,
# NAME_admin (ip:port) and NAME_pid; returns when /status answers.
blade_start() {
    local name="$1" ip="$2" auth="$3" sip admin pid
    sip="$(free_port)"; picked+="$sip "
    admin="$(free_port)"; picked+="$admin "
    cat >"$work/$name.toml" <<TOML
[blade]
id = "$name"
domain = "cc.example"
sip = "$ip:$sip"
cores = ${SIPP_CORES:-2}
admin = "$ip:$admin"

[agents]
file = "$agents"
auth = $auth
TOML
    RUST_LOG="${RUST_LOG:-warn}" "$bin" run --config "$work/$name.toml" \
        >"$work/$name.out" 2>"$work/$name.log" &
    pid=$!
    pids+=("$pid")
    printf -v "${name}_sip" '%s' "$ip:$sip"
    printf -v "${name}_admin" '%s' "$ip:$admin"
    printf -v "${name}_pid" '%s' "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || {
            show_logs "$name.log"
            fail "$name exited at start"
        }
        status_json "$ip:$admin" 2>/dev/null | grep -q '"agents"' && return 0
        sleep 0.1
    done
    show_logs "$name.log"
    fail "$name did not answer /status within 10 s"
}

# Drops a reaped pid from pids, so that the EXIT trap never kills a
# process that reuses it.
forget_pid() {
    local p kept=()
    for p in "${pids[@]}"; do
        [ "$p" = "$1" ] || kept+=("$p")
    done
    pids=("${kept[@]}")
}

# Stops a blade started here.
blade_stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget_pid "$1"
}

# The log names of the blades of the running part, for show_logs.
blade_logs=()

# sipp_one NAME BLADE_SIP ARG...: one sipp call (-m 1) to BLADE_SIP,
# bounded; its messages in $work/NAME.msg. Fails the script with the logs
# unless sipp exits 0.
sipp_one() {
    local name="$1" blade="$2" rc=0
    shift 2
    timeout 20 sipp "$blade" -t "$transport" -nostdin -timeout_error -timeout 10s -m 1 -mp "$media_port" \
        -trace_err -trace_msg -message_file "$work/$name.msg" -error_file "$work/$name.err" \
        "$@" >"$work/$name.out" 2>&1 || rc=$?
    if [ "$rc" != 0 ]; then
        show_logs "$name.msg" "$name.err" "${blade_logs[@]}"
        fail "$name: sipp exit $rc (an unexpected status, or none)"
    fi
}

# sipp_bg NAME BLADE_SIP IP PORT ARG...: sipp_one in the background, bound
# to IP:PORT; sets bg_pid once its socket is bound (UDP) or listens (TCP).
sipp_bg() {
    local name="$1" blade="$2" ip="$3" port="$4"
    shift 4
    (
        rc=0
        timeout 20 sipp "$blade" -t "$transport" -nostdin -timeout_error -timeout 10s -m 1 -mp "$media_port" \
            -trace_err -trace_msg -message_file "$work/$name.msg" -error_file "$work/$name.err" \
            -i "$ip" -p "$port" -mi "$ip" "$@" >"$work/$name.out" 2>&1 || rc=$?
        exit "$rc"
    ) &
    bg_pid=$!
    pids+=("$bg_pid")
    for _ in $(seq 100); do
        uas_ready "$ip" "$port" && return 0
        kill -0 "$bg_pid" 2>/dev/null || break
        sleep 0.05
    done
    show_logs "$name.out" "$name.err"
    fail "$name: sipp did not start on $ip:$port"
}

# sipp_wait PID NAME: waits for a sipp_bg and fails unless it exited 0.
sipp_wait() {
    local rc=0
    wait "$1" || rc=$?
    forget_pid "$1"
    if [ "$rc" != 0 ]; then
        show_logs "$2.msg" "$2.err" "${blade_logs[@]}"
        fail "$2: sipp exit $rc"
    fi
}

# A copy of the template tests/sipp/TEMPLATE.xml with @STATUS@ (and
# @REASON@) replaced; prints its path.
scenario() {
    local template="$1" status="$2" reason="${3:-}" out
    out="$work/${template}_$status.xml"
    sed -e "s/@STATUS@/$status/g" -e "s/@REASON@/$reason/g" "$here/$template.xml" >"$out"
    echo "$out"
}

# register EXT BLADE_SIP [auth]: the agent EXT logs in from its address
# (register.xml, or register_auth.xml answering the 401 with its password).
register_agent() {
    local ext="$1" blade="$2" ip port sf=register.xml creds=""
    addr "$ext"
    if [ "${3:-}" = auth ]; then
        sf=register_auth.xml creds="[authentication username=$ext password=sipp-$ext]"
    fi
    printf 'SEQUENTIAL\n%s;%s;\n' "$ext" "$creds" >"$work/register_$ext.csv"
    sipp_one "register_$ext" "$blade" -sf "$here/$sf" -inf "$work/register_$ext.csv" \
        -i "$ip" -p "$port" -mi "$ip"
}

# refused NAME STATUS CALLER CALLEE BLADE_SIP [ARG...]: CALLER's INVITE to
# CALLEE through BLADE_SIP must end in exactly STATUS (refusal_uac.xml).
refused() {
    local name="$1" status="$2" caller="$3" callee="$4" blade="$5" ip port
    shift 5
    addr "$caller"
    sipp_one "$name" "$blade" -sf "$(scenario refusal_uac "$status")" \
        -key caller "$caller" -key callee "$callee" -i "$ip" -p "$port" -mi "$ip" "$@"
    echo "$prog: $name: $caller -> $callee: $status"
}

# options NAME BLADE_SIP RURI: OPTIONS RURI must be answered 200.
options() {
    sipp_one "$1" "$2" -sf "$here/refusal_options.xml" -key ruri "$3" \
        -i 127.0.24.250 -p "$(free_port)" -mi 127.0.24.250
    echo "$prog: $1: OPTIONS $3: 200"
}

# agent_field STATUS_JSON EXT FIELD: the agent's FIELD in /status (its raw
# JSON value), empty when the agent is not listed.
agent_field() {
    grep -o '{"badge":[^{}]*}' <<<"$1" | grep "\"extension\":\"$2\"" |
        grep -o "\"$3\":[^,}]*" | cut -d: -f2- || true
}

# wait_state ADMIN EXT STATE [HOSTED_BY]: waits (3 s at most) until the
# blade at ADMIN shows EXT in STATE (and hosted_by HOSTED_BY, a raw JSON
# value such as "blade-1" or null).
wait_state() {
    local admin="$1" ext="$2" state="$3" by="${4:-}" s=""
    for _ in $(seq 60); do
        s="$(status_json "$admin" 2>/dev/null)" || s=""
        if [ "$(agent_field "$s" "$ext" state)" = "\"$state\"" ] &&
            { [ -z "$by" ] || [ "$(agent_field "$s" "$ext" hosted_by)" = "$by" ]; }; then
            return 0
        fi
        sleep 0.05
    done
    show_logs "${blade_logs[@]}"
    echo "$prog: /status of $admin: $s" >&2
    fail "$ext is not $state${by:+ (hosted_by $by)} on $admin"
}

# settled ADMIN PEER EXT...: waits (5 s at most) until the blade at ADMIN
# shows no session, no agent hosted or in a call, each EXT ready with
# hosted_by null and, when PEER is not -, PEER up.
settled() {
    local admin="$1" peer="$2" s="" ext ok
    shift 2
    for _ in $(seq 100); do
        s="$(status_json "$admin" 2>/dev/null)" || s=""
        ok=1
        all_ready "$s" "$@" || ok=""
        for ext in "$@"; do
            [ "$(agent_field "$s" "$ext" hosted_by)" = null ] || ok=""
        done
        if [ "$peer" != - ] && ! peer_up "$admin" "$peer"; then ok=""; fi
        [ -n "$ok" ] && {
            local up=""
            [ "$peer" = - ] || up="; $peer up"
            echo "$prog: $admin settled: no session; ready: $*$up"
            return 0
        }
        sleep 0.05
    done
    show_logs "${blade_logs[@]}"
    echo "$prog: /status of $admin: $s" >&2
    fail "$admin: not settled (a session left, an agent not ready, or the peer down)"
}

# held NAME CALLER CALLEE CALLER_BLADE CALLEE_BLADE UAS_NAME: the callee's
# sipp (uas.xml) answers, the caller holds the call for hold_ms in the
# background; sets hold_pid and uas_pid.
held() {
    local name="$1" caller="$2" callee="$3" cb="$4" tb="$5" uas="$6" ip port
    addr "$callee"
    sipp_bg "$uas" "$tb" "$ip" "$port" -sf "$here/uas.xml"
    uas_pid=$bg_pid
    addr "$caller"
    sipp_bg "$name" "$cb" "$ip" "$port" -sf "$here/refusal_uac_hold.xml" \
        -key caller "$caller" -key callee "$callee" -d "$hold_ms"
    hold_pid=$bg_pid
}

# cancelled NAME CALLER CALLEE CALLER_BLADE CALLEE_BLADE: CANCEL on the 180.
cancelled() {
    local name="$1" caller="$2" callee="$3" cb="$4" tb="$5" ip port
    addr "$callee"
    sipp_bg "${name}_uas" "$tb" "$ip" "$port" -sf "$here/refusal_uas_cancel.xml"
    local uas=$bg_pid
    addr "$caller"
    sipp_one "$name" "$cb" -sf "$here/refusal_uac_cancel.xml" \
        -key caller "$caller" -key callee "$callee" -i "$ip" -p "$port" -mi "$ip"
    sipp_wait "$uas" "${name}_uas"
    echo "$prog: $name: $caller -> $callee, CANCEL after 180: 200, 487"
}

# cancelled_early NAME CALLER CALLEE CALLER_BLADE CALLEE_BLADE: CANCEL on
# the 100 Trying of the caller's blade, racing the hosting and the INVITE
# to the phone. The phone (refusal_uas_cancel.xml) rings and is cancelled
# if the INVITE reached it, else it is stopped: either way the caller gets
# 200 and 487, and the blades settle.
cancelled_early() {
    local name="$1" caller="$2" callee="$3" cb="$4" tb="$5" ip port rc=0
    addr "$callee"
    sipp_bg "${name}_uas" "$tb" "$ip" "$port" -sf "$here/refusal_uas_cancel.xml"
    local uas=$bg_pid
    addr "$caller"
    sipp_one "$name" "$cb" -sf "$here/refusal_uac_cancel_early.xml" \
        -key caller "$caller" -key callee "$callee" -i "$ip" -p "$port" -mi "$ip"
    # The phone, if it rang, ends 200 ms after the blade's ACK of its 487.
    for _ in $(seq 20); do
        kill -0 "$uas" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$uas" 2>/dev/null && ! grep -q '^INVITE ' "$work/${name}_uas.msg" 2>/dev/null; then
        kill "$uas" 2>/dev/null || true
        wait "$uas" 2>/dev/null || true
        forget_pid "$uas"
        echo "$prog: $name: $caller -> $callee, CANCEL after 100: 200, 487 (the phone did not ring)"
    else
        sipp_wait "$uas" "${name}_uas"
        echo "$prog: $name: $caller -> $callee, CANCEL after 100: 200, 487 (the phone rang)"
    fi
}

# declined NAME STATUS REASON CALLER CALLEE CALLER_BLADE CALLEE_BLADE: the
# callee's phone answers STATUS REASON, which the caller must get.
declined() {
    local name="$1" status="$2" reason="$3" caller="$4" callee="$5" cb="$6" tb="$7" ip port
    addr "$callee"
    sipp_bg "${name}_uas" "$tb" "$ip" "$port" -sf "$(scenario refusal_uas_decline "$status" "$reason")"
    local uas=$bg_pid
    refused "$name" "$status" "$caller" "$callee" "$cb"
    sipp_wait "$uas" "${name}_uas"
}

part_one() {
    echo "$prog: one blade, auth = false"
    blade_start one 127.0.24.1 false
    blade_logs=(one.log)
    local b="$one_sip"
    options options_ip "$b" "sip:$b"
    options options_domain "$b" "sip:cc.example"
    for ext in 2001 2002 2003 2004 2005; do register_agent "$ext" "$b"; done
    refused unknown 404 2001 9999 "$b"
    refused not_registered 480 2001 2009 "$b"
    refused caller_logged_out 403 2009 2002 "$b"

    held hold 2001 2002 "$b" "$b" hold_uas
    wait_state "$one_admin" 2002 in_call
    refused busy 486 2003 2002 "$b"
    sipp_wait "$hold_pid" hold
    sipp_wait "$uas_pid" hold_uas

    cancelled cancel 2001 2004 "$b" "$b"
    declined decline_603 603 Decline 2001 2005 "$b" "$b"
    declined decline_486 486 "Busy Here" 2001 2005 "$b" "$b"
    settled "$one_admin" - 2001 2002 2003 2004 2005
    [ "$(agent_field "$(status_json "$one_admin")" 2009 state)" = '"logged_out"' ] ||
        fail "2009 is not logged_out"
    blade_stop "$one_pid"
}

part_auth() {
    echo "$prog: one blade, auth = true"
    blade_start auth 127.0.24.2 true
    blade_logs=(auth.log)
    local b="$auth_sip" ip port
    options auth_options "$b" "sip:$b"
    register_agent 2011 "$b" auth
    register_agent 2012 "$b" auth

    # A call that answers its challenge connects (uac_auth.xml).
    addr "2012"
    sipp_bg auth_call_uas "$b" "$ip" "$port" -sf "$here/uas.xml"
    local uas=$bg_pid
    printf 'USERS\n2011;2012;[authentication username=2011 password=sipp-2011];\n' >"$work/auth_call.csv"
    addr "2011"
    sipp_one auth_call "$b" -sf "$here/uac_auth.xml" -inf "$work/auth_call.csv" -users 1 \
        -i "$ip" -p "$port" -mi "$ip"
    sipp_wait "$uas" auth_call_uas
    echo "$prog: auth_call: 2011 -> 2012: 407, then 200"

    # CANCEL carries no credentials and is not challenged (RFC 3261 §22.1).
    addr 2012
    sipp_bg auth_cancel_uas "$b" "$ip" "$port" -sf "$here/refusal_uas_cancel.xml"
    uas=$bg_pid
    addr 2011
    sipp_one auth_cancel "$b" -sf "$here/refusal_uac_auth_cancel.xml" \
        -key caller 2011 -key callee 2012 -au 2011 -ap sipp-2011 -i "$ip" -p "$port" -mi "$ip"
    sipp_wait "$uas" auth_cancel_uas
    echo "$prog: auth_cancel: 2011 -> 2012: 407, then 180; CANCEL: 200, 487"

    addr "2013"
    sipp_one auth_logged_out "$b" -sf "$(scenario refusal_uac_auth 403)" \
        -key caller 2013 -key callee 2012 -au 2013 -ap sipp-2013 -i "$ip" -p "$port" -mi "$ip"
    echo "$prog: auth_logged_out: 2013 (not logged in) -> 2012: 407, then 403"
    addr "2011"
    sipp_one auth_wrong_password "$b" -sf "$(scenario refusal_uac_auth 403)" \
        -key caller 2011 -key callee 2012 -au 2011 -ap wrong -i "$ip" -p "$port" -mi "$ip"
    echo "$prog: auth_wrong_password: 2011 (wrong password) -> 2012: 407, then 403"
    sipp_one auth_unknown "$b" -sf "$(scenario refusal_uac_auth 404)" \
        -key caller 2011 -key callee 9999 -au 2011 -ap sipp-2011 -i "$ip" -p "$port" -mi "$ip"
    echo "$prog: auth_unknown: 2011 -> 9999: 407, then 404"

    addr "2014"
    sipp_one register_wrong_password "$b" -sf "$here/refusal_register_wrong_password.xml" \
        -key ext 2014 -au 2014 -ap wrong -i "$ip" -p "$port" -mi "$ip"
    echo "$prog: register_wrong_password: REGISTER 2014: 401, then 403"
    # From another address, for the logged-in 2011: refused the same, and
    # 2011's binding stays as it was.
    sipp_one register_wrong_password_2011 "$b" -sf "$here/refusal_register_wrong_password.xml" \
        -key ext 2011 -au 2011 -ap wrong -i "$ip" -p "$port" -mi "$ip"
    echo "$prog: register_wrong_password_2011: REGISTER 2011 from 2014's address: 401, then 403"

    settled "$auth_admin" - 2011 2012
    local s
    s="$(status_json "$auth_admin")"
    [ "$(agent_field "$s" 2013 state)" = '"logged_out"' ] || fail "2013 is not logged_out"
    [ "$(agent_field "$s" 2014 state)" = '"logged_out"' ] ||
        fail "2014 is logged in after a REGISTER with a wrong password"
    addr 2011
    [ "$(agent_field "$s" 2011 contact)" = "\"$ip:$port\"" ] ||
        fail "2011's contact changed after a REGISTER with a wrong password"
    blade_stop "$auth_pid"
}

part_cross() {
    echo "$prog: two blades, auth = false"
    auth_setting=false
    rm -rf "$work/certs" # sipblade certs does not overwrite a cluster's
    cluster_start "$agents"
    blade_logs=(blade-1.log blade-2.log)
    local s="$B1_SIP" t="$B2_SIP" ip port
    options cross_options_1 "$s" "sip:$s"
    options cross_options_2 "$t" "sip:$t"
    register_agent 2021 "$s"
    register_agent 2023 "$s"
    for ext in 2022 2024 2025 2026; do register_agent "$ext" "$t"; done

    refused cross_unknown 404 2021 9999 "$s"
    refused cross_not_registered 480 2021 2029 "$s"
    # 2027 logs in on T, then out: S must not find it there any more.
    register_agent 2027 "$t"
    wait_state "$B2_ADMIN" 2027 ready
    addr 2027
    sipp_one cross_logout "$t" -sf "$here/refusal_logout.xml" -key ext 2027 \
        -i "$ip" -p "$port" -mi "$ip"
    wait_state "$B2_ADMIN" 2027 logged_out
    refused cross_logged_out 480 2021 2027 "$s"

    cancelled cross_cancel 2021 2024 "$s" "$t"
    settled "$B1_ADMIN" blade-2 2021
    settled "$B2_ADMIN" blade-1 2024
    cancelled_early cross_cancel_early 2021 2024 "$s" "$t"
    settled "$B1_ADMIN" blade-2 2021
    settled "$B2_ADMIN" blade-1 2024
    declined cross_decline_603 603 Decline 2021 2025 "$s" "$t"
    settled "$B2_ADMIN" blade-1 2025
    declined cross_decline_486 486 "Busy Here" 2021 2025 "$s" "$t"
    settled "$B2_ADMIN" blade-1 2025

    # S hosts 2022 for the held call: a second call to 2022 is busy,
    # placed on S or on T (which hands it to S).
    held cross_hold 2021 2022 "$s" "$t" cross_hold_uas
    wait_state "$B2_ADMIN" 2022 hosted '"blade-1"'
    grep -q '"sessions":\[{[^{}]*"agents":\["2021","2022"\],"hosted":\["2022"\]' \
        <<<"$(status_json "$B1_ADMIN")" ||
        fail "blade-1 /status does not show the session of 2021 and 2022, 2022 hosted"
    refused cross_busy_on_s 486 2023 2022 "$s"
    refused cross_busy_on_t 486 2026 2022 "$t"
    # The caller is in the call too: T asks S to host 2021, S refuses.
    refused cross_caller_busy 486 2026 2021 "$t"
    sipp_wait "$hold_pid" cross_hold
    sipp_wait "$uas_pid" cross_hold_uas
    settled "$B2_ADMIN" blade-1 2022 2024 2025 2026

    # A local call on T keeps 2022 busy: T refuses S's host request.
    held cross_hold_t 2026 2022 "$t" "$t" cross_hold_t_uas
    wait_state "$B2_ADMIN" 2022 in_call
    refused cross_busy_local_on_t 486 2021 2022 "$s"
    sipp_wait "$hold_pid" cross_hold_t
    sipp_wait "$uas_pid" cross_hold_t_uas

    settled "$B1_ADMIN" blade-2 2021 2023
    settled "$B2_ADMIN" blade-1 2022 2024 2025 2026
    blade_stop "$b1_pid"
    blade_stop "$b2_pid"
}

# auth_refused NAME STATUS CALLER CALLEE BLADE_SIP: as refused, the INVITE
# challenged 407 first and sent again with CALLER's digest.
auth_refused() {
    local name="$1" status="$2" caller="$3" callee="$4" blade="$5" ip port
    addr "$caller"
    sipp_one "$name" "$blade" -sf "$(scenario refusal_uac_auth "$status")" \
        -key caller "$caller" -key callee "$callee" -au "$caller" -ap "sipp-$caller" \
        -i "$ip" -p "$port" -mi "$ip"
    echo "$prog: $name: $caller -> $callee: 407, then $status"
}

part_crossauth() {
    echo "$prog: two blades, auth = true"
    auth_setting=true
    rm -rf "$work/certs" # sipblade certs does not overwrite a cluster's
    cluster_start "$agents"
    blade_logs=(blade-1.log blade-2.log)
    local s="$B1_SIP" t="$B2_SIP" ip port uas
    register_agent 2021 "$s" auth
    for ext in 2022 2024 2025; do register_agent "$ext" "$t" auth; done

    auth_refused crossauth_unknown 404 2021 9999 "$s"
    auth_refused crossauth_not_registered 480 2021 2029 "$s"
    addr 2025
    sipp_bg crossauth_decline_uas "$t" "$ip" "$port" \
        -sf "$(scenario refusal_uas_decline 603 Decline)"
    uas=$bg_pid
    auth_refused crossauth_decline 603 2021 2025 "$s"
    sipp_wait "$uas" crossauth_decline_uas
    settled "$B2_ADMIN" blade-1 2025

    addr 2024
    sipp_bg crossauth_cancel_uas "$t" "$ip" "$port" -sf "$here/refusal_uas_cancel.xml"
    uas=$bg_pid
    addr 2021
    sipp_one crossauth_cancel "$s" -sf "$here/refusal_uac_auth_cancel.xml" \
        -key caller 2021 -key callee 2024 -au 2021 -ap sipp-2021 -i "$ip" -p "$port" -mi "$ip"
    sipp_wait "$uas" crossauth_cancel_uas
    echo "$prog: crossauth_cancel: 2021 -> 2024: 407, then 180; CANCEL: 200, 487"

    # An agent calls through its own blade: T knows 2021 is not logged in
    # there (SPEC §5), whatever S says.
    auth_refused crossauth_other_blade 403 2021 2022 "$t"

    settled "$B1_ADMIN" blade-2 2021
    settled "$B2_ADMIN" blade-1 2022 2024 2025
    blade_stop "$b1_pid"
    blade_stop "$b2_pid"
}

started=$SECONDS
for p in ${part//,/ }; do
    "part_$p"
done
echo "$prog: OK ($part, $transport, $((SECONDS - started)) s)"
