#!/usr/bin/env bash
# Measures what a cross-blade call costs the source blade compared with a
# local call: two real `sipblade run` processes (the cluster of cross.sh:
# blade-1 on 127.0.0.21, blade-2 on 127.0.0.22, QUIC with mutual TLS,
# auth = false), sipp callers registered on blade-1, and, alternating
# phases of CALLS calls each at a fixed RATE:
#
#   local  the callee is registered on blade-1 too (extensions 3001…)
#   cross  the callee is registered on blade-2 (extensions 4001…): blade-1
#          hosts it over QUIC for the call
#
#   tests/sipp/compare.sh [SIPBLADE_BINARY]
#
# Rounds alternate the order (local then cross, then cross then local, …).
# Registration happens once, before the first phase, and is not measured.
# Per phase it reports: calls successful / failed (the UAC's sipp
# counters), CPU of blade-1 and of blade-2 in ms per 1,000 calls
# (utime + stime of /proc/PID/stat, in clock ticks, sampled just before
# the UAC starts and just after the UAC and UAS have exited; and the same
# from the threads' schedstat run time, in ns, which has no tick
# rounding), the setup time seen by the UAC (INVITE sent to 200 OK
# received, from sipp's -trace_rtt: mean / p99, coarse, see setup_stats)
# and blade-1's hosting round trip (the increase of its
# sipblade_hosting_rtt_seconds histogram over
# the phase: p50 and p99 as the upper bound of the bucket where the
# cumulative count reaches 50 % / 99 %, and the mean from _sum / _count).
# Then the totals per kind and the headline ratio cross / local of
# blade-1's CPU per call. The blades' idle CPU (no calls, IDLE_SECS
# seconds) is reported too, since each phase includes about a second and a
# half of quiet (the UAS's time-wait) that the per-call figures carry.
#
# Settings (environment): CALLS per phase (default 2000), RATE calls per
# second (200), PAIRS caller/callee pairs per kind (20; call N uses pair
# N mod PAIRS, so a pair is reused every PAIRS / RATE seconds), ROUNDS
# (2, each one local and one cross phase), HOLD_MS between ACK and BYE
# (10), IDLE_SECS (3), SIPP_CORES executor threads per blade (2),
# SIPP_KEEP=1 keeps the work directory. Bounded: every sipp runs under
# its own -timeout and a `timeout`; the EXIT trap kills every process
# started here. Exit 1 when any call failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
prog="sipp compare"
# shellcheck source=lib.sh
. "$here/lib.sh"

calls="${CALLS:-2000}"
rate="${RATE:-200}"
pairs="${PAIRS:-20}"
rounds="${ROUNDS:-2}"
hold_ms="${HOLD_MS:-10}"
idle_secs="${IDLE_SECS:-3}"
for v in calls rate pairs rounds idle_secs; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || fail "${v^^} must be a positive number"
done
[[ "$hold_ms" =~ ^[0-9]+$ ]] || fail "HOLD_MS must be a number"
[ "$pairs" -le 999 ] || fail "PAIRS must be at most 999"
# sipp's global timeout per phase: twice the nominal duration, plus 60 s.
phase_timeout=$((2 * calls / rate + 60))

lib_init "${1:-}"
tck="$(getconf CLK_TCK)"

uas_ip=127.0.0.3
uac_ip=127.0.0.2
uas_port="$(free_port)"; picked+="$uas_port "
uac_port="$(free_port)"; picked+="$uac_port "
media_port="$(free_port)"; picked+="$media_port "

# Agents: callers 2001…, local callees 3001…, cross callees 4001….
for k in $(seq "$pairs"); do
    for base in 2000 3000 4000; do
        printf '[[agent]]\nbadge = "A%d"\nextension = "%d"\nkind = "agent"\npassword = "p%d"\n\n' \
            $((base + k)) $((base + k)) $((base + k))
    done
done >"$work/agents.toml"
for who in callers local_callees cross_callees; do
    case "$who" in
        callers) base=2000 ;;
        local_callees) base=3000 ;;
        cross_callees) base=4000 ;;
    esac
    {
        echo SEQUENTIAL
        for k in $(seq "$pairs"); do echo "$((base + k));"; done
    } >"$work/$who.csv"
done
for kind in local cross; do
    base=3000
    [ "$kind" = cross ] && base=4000
    {
        echo SEQUENTIAL
        for k in $(seq "$pairs"); do echo "$((2000 + k));$((base + k));"; done
    } >"$work/calls_$kind.csv"
done

cluster_start "$work/agents.toml"
echo "$prog: $rounds rounds of a local and a cross phase, $calls calls each at $rate/s," \
    "$pairs pairs per kind, hold $hold_ms ms; UAC $uac_ip:$uac_port, UAS $uas_ip:$uas_port"
cd "$work"
register local_callees "$uas_ip" "$uas_port" "$B1_SIP" "$pairs"
register cross_callees "$uas_ip" "$uas_port" "$B2_SIP" "$pairs"
register callers "$uac_ip" "$uac_port" "$B1_SIP" "$pairs"

# CPU of process $1: "ticks ns" (utime + stime from /proc/PID/stat, and
# the sum of its threads' schedstat run time).
cpu_of() {
    local pid="$1" ticks ns=0 f t
    ticks="$(sed 's/^.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }')"
    for f in /proc/"$pid"/task/*/schedstat; do
        read -r t _ <"$f" 2>/dev/null || continue
        ns=$((ns + t))
    done
    echo "$ticks $ns"
}
now_ns() { date +%s%N; }

# Idle CPU of both blades, links up, agents registered, no call.
sleep 1
read -r i1t i1n < <(cpu_of "$b1_pid")
read -r i2t i2n < <(cpu_of "$b2_pid")
sleep "$idle_secs"
read -r j1t j1n < <(cpu_of "$b1_pid")
read -r j2t j2n < <(cpu_of "$b2_pid")
idle_1=$(awk -v a="$i1n" -v b="$j1n" -v s="$idle_secs" 'BEGIN { printf "%.2f", (b - a) / 1e6 / s }')
idle_2=$(awk -v a="$i2n" -v b="$j2n" -v s="$idle_secs" 'BEGIN { printf "%.2f", (b - a) / 1e6 / s }')
echo "$prog: idle CPU (schedstat, ${idle_secs} s): blade-1 $idle_1 ms/s, blade-2 $idle_2 ms/s"

# Blade-1's hosting-RTT histogram as "le count" lines (cumulative), and
# its _sum and _count, from the /metrics text $1.
rtt_buckets() {
    awk '/^sipblade_hosting_rtt_seconds_bucket\{le="/ {
        le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le); print le, $2 }' <<<"$1"
}
# Percentile $3 (0-1) of the difference of two bucket lists $1 (before),
# $2 (after): the upper bound, in µs, of the first bucket whose cumulative
# count reaches that share; "-" when no observation.
rtt_quantile() {
    awk -v q="$3" '
        NR == FNR { before[$1] = $2; next }
        { le[n] = $1; c[n] = $2 - before[$1]; n++ }
        END {
            total = c[n - 1]
            if (total <= 0) { print "-"; exit }
            for (i = 0; i < n; i++) {
                if (c[i] >= q * total) {
                    if (le[i] == "+Inf") print ">" le[i - 1] * 1e6
                    else print "≤" le[i] * 1e6
                    exit
                }
            }
        }' <(echo "$1") <(echo "$2")
}
# The share (%) of observations at most $3 seconds (a bucket bound) in
# the difference of two bucket lists $1, $2; "-" when none.
rtt_share() {
    awk -v b="$3" '
        NR == FNR { before[$1] = $2; next }
        { c[$1] = $2 - before[$1] }
        END {
            if (c["+Inf"] <= 0) { print "-"; exit }
            for (le in c) if (le != "+Inf" && le + 0 == b + 0) { printf "%.1f\n", 100 * c[le] / c["+Inf"]; exit }
            print "?"
        }' <(echo "$1") <(echo "$2")
}
# Mean and p99 (ms) of column 2 of sipp's rtt file(s) $@. sipp stamps
# times with its event-loop clock, in whole milliseconds that move in
# steps of a few ms on this machine: one call's setup time reads 0 or
# 4 ms, so only the mean over thousands of calls says anything below a
# millisecond (and it includes sipp's own scheduling delays).
setup_stats() {
    cat "$@" 2>/dev/null | awk -F';' '$2 ~ /^[0-9.]+$/ { print $2 }' | sort -g | awk '
        { v[NR] = $1; sum += $1 }
        END {
            if (NR == 0) { print "- -"; exit }
            i99 = int(NR * 0.99 + 0.999999)
            printf "%.2f %d\n", sum / NR, v[i99]
        }'
}

results=() # one line per phase: kind ok failed ticks1 ns1 ticks2 ns2 wall_ns
failed_any=""
run_phase() {
    local kind="$1" idx="$2" dir="$work/phase_$2_$1" m1a m1b b_before b_after
    local uac_rc=0 uas_rc=0 ok ko t0 t1 c1a c1b c2a c2b
    mkdir -p "$dir"
    uas_start "uas_$idx" "$uas_ip" "$uas_port" "$B1_SIP" "$calls" "$phase_timeout"
    m1a="$(http_get "$B1_ADMIN" /metrics)" || fail "GET /metrics of blade-1 failed"
    read -r a1t a1n < <(cpu_of "$b1_pid")
    read -r a2t a2n < <(cpu_of "$b2_pid")
    t0="$(now_ns)"
    (cd "$dir" && timeout "$((phase_timeout + 30))" sipp "$B1_SIP" -nostdin -timeout_error \
        -mp "$media_port" -trace_err -trace_screen -trace_stat -fd 1 \
        -timeout "${phase_timeout}s" -sf "$here/uac_load.xml" -inf "$work/calls_$kind.csv" \
        -i "$uac_ip" -p "$uac_port" -mi "$uac_ip" -m "$calls" -r "$rate" -d "$hold_ms" \
        -trace_rtt -rtt_freq 100 \
        -stf "$dir/uac.csv" -error_file "$dir/uac.err" -screen_file "$dir/uac.screen" \
        >"$dir/uac.out" 2>&1) || uac_rc=$?
    if [ "$uac_rc" != 0 ]; then
        kill "$uas_pid" 2>/dev/null || true
        wait "$uas_pid" || true
        uas_rc=stopped
    else
        wait "$uas_pid" || uas_rc=$?
    fi
    pids=("$b1_pid" "$b2_pid")
    t1="$(now_ns)"
    read -r b1t b1n < <(cpu_of "$b1_pid")
    read -r b2t b2n < <(cpu_of "$b2_pid")
    m1b="$(http_get "$B1_ADMIN" /metrics)" || fail "GET /metrics of blade-1 failed"

    read -r ok ko < <(final_counts "$dir/uac.csv")
    if [ "$uac_rc" != 0 ] || [ "$uas_rc" != 0 ] || [ "$ok" != "$calls" ] || [ "$ko" != 0 ]; then
        failed_any=1
        echo "$prog: phase $idx ($kind): UAC sipp exit $uac_rc, UAS $uas_rc; logs in $dir" >&2
        show_logs "phase_${idx}_$kind/uac.screen" "phase_${idx}_$kind/uac.err" "uas_$idx.err"
    fi
    local route=local
    [ "$kind" = cross ] && route=cross_blade
    local name="sipblade_calls_total{outcome=\"answered\",route=\"$route\"}"
    local answered=$(($(metric "$name" "$m1b") - $(metric "$name" "$m1a")))
    b_before="$(rtt_buckets "$m1a")"
    b_after="$(rtt_buckets "$m1b")"
    local p50 p99 under_1ms mean hosts s50 s99 # s50: the mean setup time
    p50="$(rtt_quantile "$b_before" "$b_after" 0.50)"
    p99="$(rtt_quantile "$b_before" "$b_after" 0.99)"
    under_1ms="$(rtt_share "$b_before" "$b_after" 0.001)"
    hosts=$(($(metric sipblade_hosting_rtt_seconds_count "$m1b") - $(metric sipblade_hosting_rtt_seconds_count "$m1a")))
    mean="$(awk -v a="$(metric sipblade_hosting_rtt_seconds_sum "$m1a")" \
        -v b="$(metric sipblade_hosting_rtt_seconds_sum "$m1b")" -v n="$hosts" \
        'BEGIN { if (n > 0) printf "%.0f", (b - a) / n * 1e6; else print "-" }')"
    read -r s50 s99 < <(setup_stats "$dir"/*_rtt.csv)
    results+=("$kind $ok $ko $((b1t - a1t)) $((b1n - a1n)) $((b2t - a2t)) $((b2n - a2n)) $((t1 - t0))")
    awk -v idx="$idx" -v kind="$kind" -v ok="$ok" -v ko="$ko" -v ans="$answered" \
        -v t1="$((b1t - a1t))" -v n1="$((b1n - a1n))" -v t2="$((b2t - a2t))" -v n2="$((b2n - a2n))" \
        -v wall="$((t1 - t0))" -v calls="$calls" -v tck="$tck" -v s50="$s50" -v s99="$s99" \
        -v hosts="$hosts" -v p50="$p50" -v p99="$p99" -v u1="$under_1ms" -v mean="$mean" -v prog="$prog" 'BEGIN {
        k = 1000 / calls
        printf "%s: | %d | %s | %s / %s | %s | %.1f | %.1f | %.1f | %.1f | %s / %s | %s | %s / %s | %s | %s | %.1f |\n",
            prog, idx, kind, ok, ko, ans, t1 * 1000 / tck * k, n1 / 1e6 * k,
            t2 * 1000 / tck * k, n2 / 1e6 * k, s50, s99, hosts, p50, p99, u1, mean, wall / 1e9
    }'
}

echo "$prog: CPU in ms per 1,000 calls (stat = utime+stime ticks, sched = schedstat ns);" \
    "setup = INVITE→200 at the UAC, ms (mean / p99, sipp's clock: steps of a few ms); hosting RTT from blade-1's histogram, µs"
echo "$prog: | phase | kind | calls ok / failed | blade-1 answered (its route) | blade-1 CPU stat |" \
    "blade-1 CPU sched | blade-2 CPU stat | blade-2 CPU sched | setup mean / p99 ms |" \
    "host requests | hosting RTT p50 / p99 µs | hosting RTT ≤ 1 ms % | hosting RTT mean µs | wall s |"
echo "$prog: | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
idx=0
for r in $(seq "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order="local cross"; else order="cross local"; fi
    for kind in $order; do
        idx=$((idx + 1))
        run_phase "$kind" "$idx"
    done
done

# Totals per kind and the headline ratios.
summary="$(printf '%s\n' "${results[@]}" | awk -v tck="$tck" '
    { ok[$1] += $2; ko[$1] += $3; t1[$1] += $4; n1[$1] += $5; t2[$1] += $6; n2[$1] += $7 }
    END {
        for (k in ok) {
            c = ok[k] + ko[k]
            printf "%s %d %d %.1f %.1f %.1f %.1f\n", k, ok[k], ko[k],
                t1[k] * 1000 / tck / c * 1000, n1[k] / 1e6 / c * 1000,
                t2[k] * 1000 / tck / c * 1000, n2[k] / 1e6 / c * 1000
        }
    }')"
echo "$prog: totals, CPU in ms per 1,000 calls:"
echo "$prog: | kind | calls ok / failed | blade-1 CPU stat | blade-1 CPU sched | blade-2 CPU stat | blade-2 CPU sched |"
echo "$prog: | --- | --- | --- | --- | --- | --- |"
for kind in local cross; do
    awk -v k="$kind" -v p="$prog" '$1 == k {
        printf "%s: | %s | %d / %d | %.1f | %.1f | %.1f | %.1f |\n", p, $1, $2, $3, $4, $5, $6, $7 }' <<<"$summary"
done
awk -v p="$prog" '
    { s[$1] = $4; n[$1] = $5 }
    END {
        if (s["local"] > 0 && n["local"] > 0)
            printf "%s: blade-1 CPU per call, cross / local: %.2f× (stat), %.2f× (sched)\n",
                p, s["cross"] / s["local"], n["cross"] / n["local"]
    }' <<<"$summary"
[ -z "$failed_any" ] || fail "some calls failed (see above)"
echo "$prog: OK"
