# Helpers shared by the sipp scripts (sourced by run.sh and lib.sh here, and
# by benches/caps/run.sh).

# Ports in use on any address (/proc/net lists them in hex).
used_ports() {
    cat /proc/net/udp /proc/net/udp6 /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        awk '$2 ~ /:/ { split($2, a, ":"); print a[2] }'
}

picked=" "
# A free port not picked before, on any address. It runs in a subshell, so
# record what it returns: `x="$(free_port)"; picked+="$x "`. Calls the
# sourcing script's `fail` when none is found.
free_port() {
    local used port tries=0
    used="$(used_ports)"
    while :; do
        tries=$((tries + 1))
        [ "$tries" -le 200 ] || fail "no free port found"
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        grep -qx "$(printf '%04X' "$port")" <<<"$used" && continue
        [[ "$picked" == *" $port "* ]] && continue
        echo "$port"
        return
    done
}

# Whether a UDP socket is bound to IPv4 ip:port.
udp_bound() {
    local a b c d want
    IFS=. read -r a b c d <<<"$1"
    want="$(printf '%02X%02X%02X%02X:%04X' "$d" "$c" "$b" "$a" "$2")"
    awk -v w="$want" '$2 == w { found = 1 } END { exit !found }' /proc/net/udp
}

# The variant of the sipp runs the environment asks for (run.sh and
# cross.sh): SIPP_TRANSPORT u1 (UDP, one socket), t1 (TCP, one
# connection per sipp) or tn (the callers on TCP with a connection per
# call, named as the caller's Contact, so that only that connection
# reaches the caller; the callees as with t1, since a Contact sipp -t tn
# registers names a connection that closes); SIPP_AUTH set, the blades
# run with auth = true and the agents answer the challenges with sipp's
# digest (register_auth.xml, uac_auth.xml); SIPP_FLOW=dialog, each call is a whole dialog (100rel
# and PRACK, re-INVITE, INFO, UPDATE, the callee's BYE:
# uac_dialog.xml, uas_dialog.xml) instead of INVITE, ACK, BYE;
# SIPP_FLOW=builtin, the callees are sipp's built-in `uas` scenario, which
# copies no Record-Route into its answers and gives a Contact without a
# user (sip:IP:PORT), so the caller's ACK and BYE come unrouted, for that
# Contact. Sets transport, caller_transport_args and
# callee_transport_args (sipp's -t and what goes with it), auth_setting,
# register_scenario, uac_scenario and uas_args (sipp's arguments that pick
# the UAS scenario) and lost_args (the UAC's -lost, SIPP_LOST below);
# calls the sourcing script's `fail` on a bad setting.
sipp_variant() {
    transport="${SIPP_TRANSPORT:-u1}"
    [[ "$transport" =~ ^(u1|t1|tn)$ ]] || fail "SIPP_TRANSPORT must be u1 (UDP), t1 or tn (TCP)"
    caller_transport_args=(-t "$transport") callee_transport_args=(-t "$transport")
    if [ "$transport" = tn ]; then
        # sipp refuses tn unless its socket cap fits the open-files limit.
        caller_transport_args+=(-max_socket 1000) callee_transport_args=(-t t1)
    fi
    if [ -n "${SIPP_AUTH:-}" ]; then
        auth_setting=true register_scenario=register_auth.xml uac_scenario=uac_auth.xml
    else
        auth_setting=false register_scenario=register.xml uac_scenario=uac.xml
    fi
    uas_args=(-sf "$here/uas.xml")
    case "${SIPP_FLOW:-call}" in
    call) ;;
    dialog)
        [ -z "${SIPP_AUTH:-}" ] || fail "SIPP_FLOW=dialog runs without SIPP_AUTH"
        uac_scenario=uac_dialog.xml uas_args=(-sf "$here/uas_dialog.xml")
        ;;
    builtin) uas_args=(-sn uas) ;;
    *) fail "SIPP_FLOW must be call, dialog or builtin" ;;
    esac
    # SIPP_LOST=N: UAC and UAS each drop N% of the calls' messages
    # (sipp -lost), on the loss-tolerant scenarios (uac_loss.xml,
    # uas_loss.xml); the registrations go without loss.
    lost_args=()
    if [ -n "${SIPP_LOST:-}" ]; then
        [[ "$SIPP_LOST" =~ ^[0-9]+$ ]] && [ "$SIPP_LOST" -le 50 ] ||
            fail "SIPP_LOST must be a percentage from 0 to 50"
        [ "${SIPP_FLOW:-call}" = call ] && [ -z "${SIPP_AUTH:-}" ] && [ "$transport" = u1 ] ||
            fail "SIPP_LOST runs the plain call flow over UDP (no SIPP_FLOW, SIPP_AUTH or TCP)"
        lost_args=(-lost "$SIPP_LOST")
        uac_scenario=uac_loss.xml uas_args=(-sf "$here/uas_loss.xml" "${lost_args[@]}")
    fi
}

# An agent's fields after its extension in an injection file: with
# SIPP_AUTH, its digest credentials (the password is sipp-EXTENSION in
# agents.toml); none otherwise.
credentials() {
    if [ -n "${SIPP_AUTH:-}" ]; then
        echo "[authentication username=$1 password=sipp-$1];"
    fi
}

# injection_files DIR PAIRS: DIR/callees.csv and DIR/callers.csv (one
# agent a line, for register*.xml) and DIR/calls.csv (one pair a line,
# for uac*.xml); pair k: caller 1000+2k-1 calls callee 1000+2k, each
# followed by its `credentials`.
injection_files() {
    local dir="$1" pairs="$2" k caller ext name first
    for name in callees callers; do
        first=$([ "$name" = callees ] && echo 1000 || echo 999)
        {
            echo SEQUENTIAL
            for k in $(seq "$pairs"); do
                ext=$((first + 2 * k))
                echo "$ext;$(credentials $ext)"
            done
        } >"$dir/$name.csv"
    done
    {
        echo USERS
        for k in $(seq "$pairs"); do
            caller=$((999 + 2 * k))
            echo "$caller;$((1000 + 2 * k));$(credentials $caller)"
        done
    } >"$dir/calls.csv"
}

# Whether a sipp UAS is ready on IPv4 ip:port: bound (UDP) or listening
# (TCP), as $transport says.

uas_ready() {
    if [ "$transport" != u1 ]; then
        tcp_listening "$1" "$2"
    else
        udp_bound "$1" "$2"
    fi
}

# Whether a TCP socket listens on IPv4 ip:port (state 0A is LISTEN).
tcp_listening() {
    local a b c d want
    IFS=. read -r a b c d <<<"$1"
    want="$(printf '%02X%02X%02X%02X:%04X' "$d" "$c" "$b" "$a" "$2")"
    awk -v w="$want" '$2 == w && $4 == "0A" { found = 1 } END { exit !found }' /proc/net/tcp
}

# sipp's final counters from its statistics file: "successful failed".
final_counts() {
    awk -F';' '
        NR == 1 {
            for (i = 1; i <= NF; i++) {
                if ($i == "SuccessfulCall(C)") s = i
                if ($i == "FailedCall(C)") f = i
            }
            next
        }
        { ok = $s; ko = $f }
        END { if (s && f && NR > 1) print ok + 0, ko + 0; else print "? ?" }' "$1" 2>/dev/null ||
        echo "? ?"
}
