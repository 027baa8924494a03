# Shared by tests/sipp/cross.sh and tests/sipp/compare.sh (sourced, not
# run): a two-blade cluster of real `sipblade run` processes on loopback,
# and the sipp helpers around it.
#
# The sourcing script sets `prog` (the prefix of its messages) and calls:
#
#   lib_init [SIPBLADE_BINARY]   binary, sipp, work directory, EXIT trap
#   cluster_start AGENTS_FILE    certificates, configs, both blades, links up
#   register WHO IP PORT SIP N   N REGISTERs of $work/WHO.csv from IP:PORT
#   ...
#
# Addresses: blade-1 on 127.0.0.21 and blade-2 on 127.0.0.22 (SIP UDP+TCP,
# QUIC and admin each on a free port of that address), so the blades never
# share a port with the single-blade test (tests/sipp/run.sh, 127.0.0.1).
# Every process started here is killed by the EXIT trap; every wait is
# bounded.

B1_IP=127.0.0.21
B2_IP=127.0.0.22

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

fail() {
    echo "$prog: FAIL: $*" >&2
    exit 1
}

# transport, auth_setting and the scenarios, from SIPP_TRANSPORT and
# SIPP_AUTH (common.sh).
sipp_variant

# Finds the binary and sipp, makes $work, installs the cleanup trap.
lib_init() {
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
    work="$(mktemp -d "${TMPDIR:-/tmp}/sipblade-sipp-cross.XXXXXX")"
    pids=()
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

cleanup() {
    local status=$? pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" != 0 ] || [ -n "${SIPP_KEEP:-}" ]; then
        echo "$prog: logs kept in $work" >&2
    else
        rm -rf "$work"
    fi
}

# GET $2 from the admin address $1 (ip:port): headers and body on stdout.
http_get() {
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/${1%:*}/${1##*:}" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n" "$2" "$1" >&3
        cat <&3' _ "$1" "$2"
}
# The JSON body of /status of the blade whose admin address is $1.
status_json() {
    http_get "$1" /status | sed -n '/^{/p'
}

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

# Certificates, both configs, both blades; returns when each blade's
# /status shows the other one up. Sets B1_SIP, B2_SIP, B1_ADMIN, B2_ADMIN
# (ip:port) and b1_pid, b2_pid.
cluster_start() {
    local agents="$1" cores="${SIPP_CORES:-2}" i p v
    local b1_sip b1_quic b1_admin b2_sip b2_quic b2_admin
    for v in b1_sip b1_quic b1_admin b2_sip b2_quic b2_admin; do
        p="$(free_port)"
        picked+="$p "
        printf -v "$v" '%s' "$p"
    done
    B1_SIP="$B1_IP:$b1_sip" B1_ADMIN="$B1_IP:$b1_admin"
    B2_SIP="$B2_IP:$b2_sip" B2_ADMIN="$B2_IP:$b2_admin"
    "$bin" certs --dir "$work/certs" --blades blade-1,blade-2 >"$work/certs.out" 2>&1 || {
        cat "$work/certs.out" >&2
        fail "sipblade certs failed"
    }
    for i in 1 2; do
        local ip sip quic admin peer peer_ip peer_sip peer_quic
        if [ "$i" = 1 ]; then
            ip=$B1_IP sip=$b1_sip quic=$b1_quic admin=$b1_admin
            peer=blade-2 peer_ip=$B2_IP peer_sip=$b2_sip peer_quic=$b2_quic
        else
            ip=$B2_IP sip=$b2_sip quic=$b2_quic admin=$b2_admin
            peer=blade-1 peer_ip=$B1_IP peer_sip=$b1_sip peer_quic=$b1_quic
        fi
        cat >"$work/blade-$i.toml" <<TOML
[blade]
id = "blade-$i"
domain = "cc.example"
sip = "$ip:$sip"
cores = $cores
admin = "$ip:$admin"

[cluster]
listen = "$ip:$quic"
ca = "$work/certs/ca.pem"
cert = "$work/certs/blade-$i.pem"
key = "$work/certs/blade-$i.key"
lease_secs = 30

[[cluster.peer]]
id = "$peer"
quic = "$peer_ip:$peer_quic"
sip = "$peer_ip:$peer_sip"

[agents]
file = "$agents"
auth = $auth_setting
TOML
        RUST_LOG="${RUST_LOG:-warn}" "$bin" run --config "$work/blade-$i.toml" \
            >"$work/blade-$i.out" 2>"$work/blade-$i.log" &
        pids+=("$!")
        printf -v "b${i}_pid" '%s' "$!"
    done
    echo "$prog: blade-1 SIP $B1_SIP admin $B1_ADMIN QUIC $B1_IP:$b1_quic (pid $b1_pid);" \
        "blade-2 SIP $B2_SIP admin $B2_ADMIN QUIC $B2_IP:$b2_quic (pid $b2_pid); cores = $cores"
    # Each blade answers /status and sees its peer up (20 s at most).
    local pid_var up_1="" up_2=""
    for _ in $(seq 200); do
        for i in 1 2; do
            pid_var="b${i}_pid"
            kill -0 "${!pid_var}" 2>/dev/null || {
                show_logs "blade-$i.log"
                fail "blade-$i exited at start"
            }
        done
        if [ -z "$up_1" ] && peer_up "$B1_ADMIN" blade-2; then up_1=1; fi
        if [ -z "$up_2" ] && peer_up "$B2_ADMIN" blade-1; then up_2=1; fi
        [ -n "$up_1" ] && [ -n "$up_2" ] && return 0
        sleep 0.1
    done
    show_logs blade-1.log blade-2.log
    echo "$prog: blade-1 /status: $(status_json "$B1_ADMIN" 2>/dev/null)" >&2
    echo "$prog: blade-2 /status: $(status_json "$B2_ADMIN" 2>/dev/null)" >&2
    fail "the blades did not see each other up within 20 s"
}

# Whether the blade with admin address $1 shows peer $2 with up: true.
peer_up() {
    status_json "$1" 2>/dev/null | grep -o "{[^{}]*\"id\":\"$2\"[^{}]*}" | grep -q '"up":true'
}

# register WHO IP PORT BLADE_SIP N: N REGISTERs (200 each, after a 401
# with SIPP_AUTH)
# of the extensions in $work/WHO.csv, from IP:PORT to BLADE_SIP.
register() {
    local who="$1" ip="$2" port="$3" blade="$4" n="$5" rc=0
    local -n transport_args="${who%s}_transport_args"
    timeout 60 sipp "$blade" "${transport_args[@]}" -nostdin -timeout_error -mp "$media_port" \
        -trace_err -trace_screen -trace_stat -fd 1 -timeout 40s -sf "$here/$register_scenario" \
        -inf "$work/$who.csv" -i "$ip" -p "$port" -mi "$ip" -m "$n" -r 200 \
        -stf "$work/register_$who.csv" -error_file "$work/register_$who.err" \
        -screen_file "$work/register_$who.screen" >"$work/register_$who.out" 2>&1 || rc=$?
    if [ "$rc" != 0 ]; then
        show_logs "register_$who.screen" "register_$who.err" blade-1.log blade-2.log
        fail "REGISTER of the $who on $blade failed (sipp exit $rc)"
    fi
}


# Starts a sipp UAS (uas_args: uas.xml by default) on IP:PORT for N calls in the
# background, logs under $work/NAME.*; sets uas_pid. Waits until it binds
# (UDP) or listens (TCP).
uas_start() {
    local name="$1" ip="$2" port="$3" blade="$4" n="$5" secs="$6"
    timeout "$((secs + 30))" sipp "$blade" "${callee_transport_args[@]}" -nostdin -timeout_error -mp "$media_port" \
        -trace_err -trace_screen -trace_stat -fd 1 -timeout "${secs}s" \
        "${uas_args[@]}" -i "$ip" -p "$port" -mi "$ip" -m "$n" \
        -stf "$work/$name.csv" -error_file "$work/$name.err" -screen_file "$work/$name.screen" \
        >"$work/$name.out" 2>&1 &
    uas_pid=$!
    pids+=("$uas_pid")
    for _ in $(seq 200); do
        uas_ready "$ip" "$port" && return 0
        kill -0 "$uas_pid" 2>/dev/null || break
        sleep 0.05
    done
    show_logs "$name.out" "$name.err"
    fail "the UAS $name did not start"
}

# The value of the metric line whose name-and-labels is exactly $1, in
# the /metrics text $2 (empty when absent).
metric() {
    awk -v n="$1" '$1 == n { print $2 }' <<<"$2"
}

# Whether /status JSON $1 shows no session, no agent hosted or in a call,
# and each extension in $2.. in state ready (agents registered on another
# blade show logged_out here).
all_ready() {
    local status="$1" ext agent
    shift
    grep -q '"sessions":\[\]' <<<"$status" || return 1
    grep -q '"state":"\(hosted\|in_call\)"' <<<"$status" && return 1
    for ext in "$@"; do
        agent="$(grep -o '{"badge":[^{}]*}' <<<"$status" | grep "\"extension\":\"$ext\"")" || return 1
        grep -q '"state":"ready"' <<<"$agent" || return 1
    done
}
