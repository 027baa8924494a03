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
