#!/usr/bin/env python3
"""Plots of a scaling run (benches/scaling/scale.sh); python3 stdlib only.

    benches/scaling/plot.py SCALE_TXT OUT_DIR

Reads the lines scale.sh wrote ("LABEL cores=N rate=R secs=S
blade_ticks=T {report}"; lines of older runs without a LABEL count as
"sipblade") and writes to OUT_DIR:

  scaling_caps.svg  achieved vs offered CAPS, one line per build and core count
  scaling_cpu.svg   blade CPU ms per 1,000 calls vs offered CAPS, likewise

CPU per 1,000 calls is blade_ticks over the calls placed (CLK_TCK = 100,
what scale.sh's machine reported).
"""

import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "caps"))
from report import svg_plot  # noqa: E402

LINE = re.compile(r"^(?:(\S+) )?cores=(\d+) rate=(\d+) secs=\d+ blade_ticks=(\d+) (\{.*\})\s*$")
PALETTE = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
TICK_MS = 10  # one clock tick at CLK_TCK = 100


def read(path):
    runs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            label, cores, rate, ticks, report = m.groups()
            try:
                r = json.loads(report)
            except json.JSONDecodeError:
                continue
            calls = r.get("calls") or 0
            runs.append(
                {
                    "series": f"{label or 'sipblade'}, {cores} core{'s' if cores != '1' else ''}",
                    "offered": int(rate),
                    "achieved": r.get("achieved_cps"),
                    "cpu": int(ticks) * TICK_MS * 1000 / calls if calls else None,
                }
            )
    return runs


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plot.py SCALE_TXT OUT_DIR")
    runs = read(sys.argv[1])
    if not runs:
        sys.exit(f"plot.py: no scale.sh lines in {sys.argv[1]}")
    caps, cpu = {}, {}
    for run in runs:
        caps.setdefault(run["series"], []).append((run["offered"], run["achieved"]))
        cpu.setdefault(run["series"], []).append((run["offered"], run["cpu"]))
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(caps)}
    os.makedirs(sys.argv[2], exist_ok=True)
    charts = {
        "scaling_caps.svg": svg_plot(
            "sipblade load: achieved vs offered CAPS", "offered calls/s",
            "achieved calls/s", caps, diagonal=True, colours=colours),
        "scaling_cpu.svg": svg_plot(
            "blade CPU per 1,000 calls", "offered calls/s",
            "CPU ms / 1,000 calls", cpu, colours=colours),
    }
    for name, text in charts.items():
        with open(os.path.join(sys.argv[2], name), "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
