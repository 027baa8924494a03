#!/usr/bin/env python3
"""Report of the CAPS harness (benches/caps/run.sh); python3 stdlib only.

Reads the raw per-phase lines that run.sh wrote (--raw, TSV) and the sipp
response-time files (-trace_rtt) in each phase's directory, and writes to
--out:

  results.json  every phase with its derived figures, and the run's metadata
  results.tsv   the same phases as one TSV line each
  table.md      the markdown table (also printed on stdout)
  caps.svg      achieved vs offered CAPS, one line per proxy
  cpu.svg       proxy CPU ms per 1,000 calls vs offered CAPS, per proxy:
                utime + stime (solid) and schedstat (dashed)

Derived figures, per phase:
  achieved_caps   calls set up per second: (n - 1) / (t_n - t_1) over the
                  UAC's setup completions (the timestamps of sipp's rtt
                  file: 200 / 486 / 487 received), n the number of them;
                  ok / wall time when fewer than two
  proxy_cpu_ms_per_1k        utime + stime (clock ticks of /proc/PID/stat,
                             all the proxy's processes and threads) over the
                             phase, in ms per 1,000 calls placed
  proxy_sched_ms_per_1k      the same from the threads' schedstat run time
                             (ns; no tick rounding)
  proxy_net_ms_per_1k        schedstat less the proxy's idle CPU (ms/s,
                             measured by run.sh before the phases) times
                             the phase's wall time
  sipp_cpu_ms_per_1k         sipp UAC + UAS user + system time per 1,000 calls
  setup_p50_ms, setup_p99_ms response time 1 of the UAC scenario: INVITE
                             sent to 200 received (busy: to 486; cancel:
                             to 487), nearest-rank percentiles, and
  setup_mean_ms              the mean (sipp measures whole milliseconds)

With --strict, exits 1 unless every phase had every call succeed on both
sipp sides (what --smoke requires).
"""

import argparse
import glob
import json
import math
import os
import sys

INT_FIELDS = ("rate", "calls", "proxy_ticks", "proxy_ns", "wall_ns")
COUNT_FIELDS = ("uac_ok", "uac_failed", "uas_ok", "uas_failed")


def num(text):
    """An int or float from text, None for '-' or anything unparsable."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return None


def read_rtt(directory):
    """(completion timestamps in ms, response times in ms) from the sipp
    -trace_rtt files in directory (lines `date_ms;rtt_ms;rtd_no`)."""
    stamps, times = [], []
    for path in sorted(glob.glob(os.path.join(directory, "*_rtt.csv"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.strip().split(";")
                if len(parts) < 2:
                    continue
                try:
                    stamp, rtt = float(parts[0]), float(parts[1])
                except ValueError:
                    continue  # header line
                if len(parts) >= 3 and parts[2].strip() not in ("", "1"):
                    continue  # another rtd than the setup time
                stamps.append(stamp)
                times.append(rtt)
    return stamps, times


def percentile(sorted_values, q):
    """Nearest-rank percentile q (0..1) of sorted_values; None if empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def derive(row, tck, idle):
    calls = row["calls"]
    per_1k = 1000.0 / calls if calls else 0.0
    stamps, times = read_rtt(row["rtt_dir"])
    stamps.sort()
    times.sort()
    ok = row["uac_ok"] or 0
    wall_s = row["wall_ns"] / 1e9
    if len(stamps) >= 2 and stamps[-1] > stamps[0]:
        # sipp's rtt dates: ms since sipp started.
        achieved = (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1000.0)
    else:
        achieved = ok / wall_s if wall_s > 0 else None
    sipp_cpu = None
    if row["uac_cpu_s"] is not None and row["uas_cpu_s"] is not None:
        sipp_cpu = (row["uac_cpu_s"] + row["uas_cpu_s"]) * 1000.0 * per_1k
    row.update(
        {
            "wall_s": round(wall_s, 3),
            "achieved_caps": None if achieved is None else round(achieved, 1),
            "proxy_cpu_ms": round(row["proxy_ticks"] * 1000.0 / tck, 1),
            "proxy_cpu_ms_per_1k": round(row["proxy_ticks"] * 1000.0 / tck * per_1k, 1),
            "proxy_sched_ms_per_1k": round(row["proxy_ns"] / 1e6 * per_1k, 1),
            "proxy_net_ms_per_1k": None
            if idle.get(row["proxy"]) is None
            else round((row["proxy_ns"] / 1e6 - idle[row["proxy"]] * wall_s) * per_1k, 1),
            "sipp_cpu_ms_per_1k": None if sipp_cpu is None else round(sipp_cpu, 1),
            "setup_samples": len(times),
            "setup_mean_ms": round(sum(times) / len(times), 2) if times else None,
            "setup_p50_ms": percentile(times, 0.50),
            "setup_p99_ms": percentile(times, 0.99),
        }
    )
    failed = row["uac_failed"]
    row["ok"] = (
        row["uac_rc"] == 0
        and row["uas_rc"] == 0
        and row["uac_ok"] == calls
        and row["uas_ok"] == calls
        and failed == 0
        and row["uas_failed"] == 0
    )
    return row


def fmt(value, digits=1):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(rows, meta):
    out = []
    out.append(
        "| proxy | scenario | offered CAPS | calls | ok / failed (UAS ok / failed) "
        "| achieved CAPS | proxy CPU ms / 1k calls: stat | schedstat | schedstat − idle "
        "| sipp CPU ms / 1k calls | setup ms: p50 / p99 (mean) | wall s |"
    )
    out.append("| " + " | ".join(["---"] * 12) + " |")
    for r in rows:
        out.append(
            "| {proxy} | {scenario} | {rate} | {calls} | {ok} / {ko} ({uok} / {uko}) | {ach} | {cpu} "
            "| {sched} | {net} | {sipp} | {p50} / {p99} ({mean}) | {wall} |".format(
                proxy=r["proxy"],
                scenario=r["scenario"],
                rate=r["rate"],
                calls=r["calls"],
                ok=fmt(r["uac_ok"]),
                ko=fmt(r["uac_failed"]),
                uok=fmt(r["uas_ok"]),
                uko=fmt(r["uas_failed"]),
                ach=fmt(r["achieved_caps"]),
                cpu=fmt(r["proxy_cpu_ms_per_1k"]),
                sched=fmt(r["proxy_sched_ms_per_1k"]),
                net=fmt(r["proxy_net_ms_per_1k"]),
                sipp=fmt(r["sipp_cpu_ms_per_1k"]),
                p50=fmt(r["setup_p50_ms"], 0),
                p99=fmt(r["setup_p99_ms"], 0),
                mean=fmt(r["setup_mean_ms"], 1),
                wall=fmt(r["wall_s"], 2),
            )
        )
    # Kamailio / sipblade CPU per call, per scenario and rate.
    pairs = {}
    for r in rows:
        pairs.setdefault((r["scenario"], r["rate"]), {})[r["proxy"]] = r
    ratio_lines = []
    for (scen, rate), by in pairs.items():
        s, k = by.get("sipblade"), by.get("kamailio")
        if s and k and s["proxy_sched_ms_per_1k"] and k["proxy_sched_ms_per_1k"]:
            ratio_lines.append(
                f"| {scen} | {rate} | {k['proxy_sched_ms_per_1k'] / s['proxy_sched_ms_per_1k']:.2f}× |"
            )
    if ratio_lines:
        out.append("")
        out.append("| scenario | offered CAPS | Kamailio CPU ÷ sipblade CPU (schedstat) |")
        out.append("| --- | --- | --- |")
        out.extend(ratio_lines)
    out.append("")
    out.append(
        "CPU: utime + stime of every process and thread of the proxy (stat, clock ticks), "
        "the threads' schedstat run time (ns), and that less the proxy's idle CPU "
        "(sipblade {si} ms/s, Kamailio {ki} ms/s) times the phase's wall time; per 1,000 calls "
        "placed. sipp CPU: UAC + UAS. Setup: INVITE sent to 200 (busy: 486, cancel: 487) "
        "received at the UAC, in sipp's whole milliseconds; in the call scenario it includes "
        "the UAS's 5 ms between its 180 and its 200.".format(
            si=meta.get("idle_ms_per_s.sipblade", "?"), ki=meta.get("idle_ms_per_s.kamailio", "?")
        )
    )
    out.append("")
    out.append(
        "Machine: {cpu}, {nproc} CPUs, kernel {kernel}; sipblade cores = Kamailio children = {cores}; "
        "{pairs} pairs, hold {hold} ms; {kam} ({kp} processes), sipblade {st} threads; {sipp} "
        "({sp} UAC/UAS pairs, UAC transport {st_t}); "
        "load average at the end {load}; {date}. sipblade at the end: {end}; malformed "
        "messages {malformed}.".format(
            end=meta.get("sipblade_end_state", "?"),
            malformed=meta.get("sipblade_malformed", "?"),
            cpu=meta.get("cpu", "?"),
            nproc=meta.get("nproc", "?"),
            kernel=meta.get("kernel", "?"),
            cores=meta.get("cores", "?"),
            pairs=meta.get("pairs", "?"),
            hold=meta.get("hold_ms", "?"),
            kam="Kamailio " + meta.get("kamailio", "?"),
            kp=meta.get("kamailio_processes", "?"),
            st=meta.get("sipblade_threads", "?"),
            sipp=meta.get("sipp", "sipp"),
            sp=meta.get("sipp_pairs", "1"),
            st_t=meta.get("sipp_transport", "u1"),
            load=meta.get("loadavg_end", "?"),
            date=meta.get("date", "?"),
        )
    )
    return "\n".join(out) + "\n"


COLOURS = {"sipblade": "#d62728", "kamailio": "#1f77b4"}


def nice_max(value):
    """A round axis maximum ≥ value."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):  # multiples that ticks() divides
        if m * exp >= value:
            return m * exp
    return 10 * exp


def ticks(vmax):
    """Round tick values from 0 to vmax (4 to 8 of them)."""
    raw = vmax / 5
    exp = 10 ** math.floor(math.log10(raw))
    step = next(m * exp for m in (1, 2, 2.5, 5, 10) if m * exp >= raw)
    count = int(vmax / step + 1e-9)
    return [step * i for i in range(count + 1)]


def svg_plot(title, xlabel, ylabel, series, diagonal=False, colours=None):
    """A line chart: series = {name: [(x, y), ...]}; colours may name a
    colour per series (else by the name's first word). Returns SVG text."""
    width, height = 680, 420
    left, right, top, bottom = 70, 190, 40, 55
    pw, ph = width - left - right, height - top - bottom
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts if y is not None]
    xmax = nice_max(max(xs) if xs else 1)
    ymax = nice_max(max(ys + (xs if diagonal else [])) if ys else 1)

    def px(x):
        return left + pw * x / xmax

    def py(y):
        return top + ph - ph * y / ymax

    e = []
    e.append(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">'
    )
    e.append(f'<rect width="{width}" height="{height}" fill="white"/>')
    e.append(
        f'<text x="{left + pw / 2}" y="22" text-anchor="middle" font-size="15">{esc(title)}</text>'
    )
    for gx in ticks(xmax):
        e.append(
            f'<line x1="{px(gx):.1f}" y1="{top}" x2="{px(gx):.1f}" y2="{top + ph}" stroke="#e5e5e5"/>'
        )
        e.append(
            f'<text x="{px(gx):.1f}" y="{top + ph + 18}" text-anchor="middle">{gx:g}</text>'
        )
    for gy in ticks(ymax):
        e.append(
            f'<line x1="{left}" y1="{py(gy):.1f}" x2="{left + pw}" y2="{py(gy):.1f}" stroke="#e5e5e5"/>'
        )
        e.append(
            f'<text x="{left - 8}" y="{py(gy) + 4:.1f}" text-anchor="end">{gy:g}</text>'
        )
    e.append(
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>'
    )
    e.append(
        f'<text x="{left + pw / 2}" y="{height - 12}" text-anchor="middle">{esc(xlabel)}</text>'
    )
    e.append(
        f'<text x="18" y="{top + ph / 2}" text-anchor="middle" '
        f'transform="rotate(-90 18 {top + ph / 2})">{esc(ylabel)}</text>'
    )
    legend_y = top + 10
    if diagonal:
        top_xy = min(xmax, ymax)
        e.append(
            f'<line x1="{px(0):.1f}" y1="{py(0):.1f}" x2="{px(top_xy):.1f}" y2="{py(top_xy):.1f}" '
            'stroke="#999" stroke-dasharray="5,4"/>'
        )
        e.append(
            f'<line x1="{left + pw + 12}" y1="{legend_y}" x2="{left + pw + 36}" y2="{legend_y}" '
            'stroke="#999" stroke-dasharray="5,4"/>'
        )
        e.append(f'<text x="{left + pw + 42}" y="{legend_y + 4}">offered</text>')
        legend_y += 20
    for name, pts in series.items():
        colour = (colours or {}).get(name) or COLOURS.get(name.split(" ")[0], "#2ca02c")
        dash = ' stroke-dasharray="6,4"' if name.endswith("(schedstat)") else ""
        pts = sorted((x, y) for x, y in pts if y is not None)
        if not pts:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        e.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
        )
        for x, y in pts:
            e.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{colour}">'
                f"<title>{esc(name)}: {x:g} → {y:g}</title></circle>"
            )
        e.append(
            f'<line x1="{left + pw + 12}" y1="{legend_y}" x2="{left + pw + 36}" y2="{legend_y}" '
            f'stroke="{colour}" stroke-width="2"{dash}/>'
        )
        e.append(f'<text x="{left + pw + 42}" y="{legend_y + 4}">{esc(name)}</text>')
        legend_y += 20
    e.append("</svg>")
    return "\n".join(e) + "\n"


def esc(text):
    return (
        str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--raw", required=True, help="run.sh's raw TSV")
    ap.add_argument("--out", required=True, help="results directory")
    ap.add_argument("--tck", type=int, default=100, help="clock ticks per second")
    ap.add_argument("--meta", action="append", default=[], help="KEY=VALUE for results.json")
    ap.add_argument("--strict", action="store_true", help="exit 1 unless every call succeeded")
    args = ap.parse_args()

    meta = {}
    for item in args.meta:
        key, _, value = item.partition("=")
        meta[key] = value

    idle = {}
    for proxy in ("sipblade", "kamailio"):
        idle[proxy] = num(meta.get(f"idle_ms_per_s.{proxy}", "-"))

    rows = []
    with open(args.raw, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            if not line.strip():
                continue
            row = dict(zip(header, line.rstrip("\n").split("\t")))
            for k in INT_FIELDS:
                row[k] = int(row[k])
            for k in COUNT_FIELDS + ("uac_rc", "uas_rc"):
                row[k] = num(row[k])
            for k in ("uac_cpu_s", "uas_cpu_s"):
                row[k] = num(row[k])
            rows.append(derive(row, args.tck, idle))

    os.makedirs(args.out, exist_ok=True)
    fields = [
        "proxy", "scenario", "rate", "calls", "uac_ok", "uac_failed", "uas_ok", "uas_failed",
        "achieved_caps", "proxy_cpu_ms", "proxy_cpu_ms_per_1k", "proxy_sched_ms_per_1k",
        "proxy_net_ms_per_1k", "sipp_cpu_ms_per_1k", "setup_p50_ms", "setup_p99_ms",
        "setup_mean_ms", "setup_samples", "wall_s",
        "uac_rc", "uas_rc", "ok",
    ]
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(
            {"meta": meta, "phases": [{k: r.get(k) for k in fields + ["rtt_dir"]} for r in rows]},
            f,
            indent=2,
            ensure_ascii=False,
        )
        f.write("\n")
    with open(os.path.join(args.out, "results.tsv"), "w", encoding="utf-8") as f:
        f.write("\t".join(fields) + "\n")
        for r in rows:
            f.write("\t".join(fmt(r.get(k), 3) for k in fields) + "\n")
    table = markdown(rows, meta)
    with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as f:
        f.write(table)

    calls_rows = [r for r in rows if r["scenario"] == "call"]
    proxies = []
    for r in calls_rows:
        if r["proxy"] not in proxies:
            proxies.append(r["proxy"])
    caps = {p: [(r["rate"], r["achieved_caps"]) for r in calls_rows if r["proxy"] == p] for p in proxies}
    cpu = {}
    for p in proxies:
        cpu[f"{p} (stat)"] = [(r["rate"], r["proxy_cpu_ms_per_1k"]) for r in calls_rows if r["proxy"] == p]
        cpu[f"{p} (schedstat)"] = [
            (r["rate"], r["proxy_sched_ms_per_1k"]) for r in calls_rows if r["proxy"] == p
        ]
    with open(os.path.join(args.out, "caps.svg"), "w", encoding="utf-8") as f:
        f.write(
            svg_plot("Achieved vs offered CAPS", "offered CAPS (sipp -r)", "achieved CAPS", caps, diagonal=True)
        )
    with open(os.path.join(args.out, "cpu.svg"), "w", encoding="utf-8") as f:
        f.write(
            svg_plot(
                "Proxy CPU per 1,000 calls",
                "offered CAPS (sipp -r)",
                "proxy CPU ms per 1,000 calls",
                cpu,
            )
        )

    sys.stdout.write(table)
    bad = [r for r in rows if not r["ok"]]
    for r in bad:
        print(
            f"caps: {r['proxy']} {r['scenario']} at {r['rate']}/s: UAC ok {fmt(r['uac_ok'])} failed "
            f"{fmt(r['uac_failed'])} (exit {fmt(r['uac_rc'])}), UAS ok {fmt(r['uas_ok'])} failed "
            f"{fmt(r['uas_failed'])} (exit {fmt(r['uas_rc'])}) of {r['calls']}; logs: {r['rtt_dir']}",
            file=sys.stderr,
        )
    if args.strict and bad:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
