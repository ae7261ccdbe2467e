#!/usr/bin/env python3
"""Draws docs/benchmarks.svg (ops/s against concurrency, log-log) from kms-bench's --json output,
with the standard library only.

    python3 docs/bench_plot.py RESULTS.json docs/benchmarks.svg
"""
import json
import math
import sys

COLORS = {
    "Empty": "#999999", "HsmLimit": "#444444", "Encrypt": "#1f77b4", "Decrypt": "#ff7f0e",
    "GenerateDataKey": "#2ca02c", "ReEncrypt": "#9467bd", "OpenBaoEncrypt": "#d62728",
}
LABELS = {
    "Empty": "empty RPC (transport limit)", "HsmLimit": "raw HSM HMAC (HSM limit)",
    "Encrypt": "Encrypt 4 KiB", "Decrypt": "Decrypt 4 KiB", "GenerateDataKey": "GenerateDataKey 32 B",
    "ReEncrypt": "ReEncrypt 4 KiB", "OpenBaoEncrypt": "OpenBao transit encrypt 4 KiB",
}
W, H, LEFT, RIGHT, TOP, BOTTOM = 760, 440, 70, 250, 30, 50


def main(results, out):
    rows = json.load(open(results))
    series = {}
    for r in rows:
        series.setdefault(r["op"], []).append((r["concurrency"], r["ops_per_sec"]))
    xs = sorted({c for pts in series.values() for c, _ in pts})
    ys = [v for pts in series.values() for _, v in pts if v > 0]
    x0, x1 = math.log10(min(xs)), math.log10(max(xs)) or 1
    y0, y1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    px = lambda c: LEFT + (math.log10(c) - x0) / max(x1 - x0, 1e-9) * (W - LEFT - RIGHT)  # noqa: E731
    py = lambda v: H - BOTTOM - (math.log10(v) - y0) / (y1 - y0) * (H - TOP - BOTTOM)  # noqa: E731
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{LEFT}" y="18" font-size="14">ops/s against concurrent clients (log-log)</text>']
    for e in range(y0, y1 + 1):
        y = py(10 ** e)
        svg.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        svg.append(f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{10 ** e:g}</text>')
    for c in xs:
        x = px(c)
        svg.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{H - BOTTOM}" stroke="#eee"/>')
        svg.append(f'<text x="{x:.1f}" y="{H - BOTTOM + 18}" text-anchor="middle">{c}</text>')
    svg.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 12}" text-anchor="middle">'
               'concurrent clients</text>')
    for i, (op, pts) in enumerate(sorted(series.items(), key=lambda kv: list(COLORS).index(kv[0])
                                         if kv[0] in COLORS else 99)):
        pts = sorted(p for p in pts if p[1] > 0)
        color = COLORS.get(op, "#000")
        dash = ' stroke-dasharray="5,4"' if op in ("Empty", "HsmLimit") else ""
        path = " ".join(f"{px(c):.1f},{py(v):.1f}" for c, v in pts)
        svg.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for c, v in pts:
            svg.append(f'<circle cx="{px(c):.1f}" cy="{py(v):.1f}" r="3" fill="{color}"/>')
        ly = TOP + 16 + i * 20
        svg.append(f'<line x1="{W - RIGHT + 15}" x2="{W - RIGHT + 40}" y1="{ly - 4}" y2="{ly - 4}" '
                   f'stroke="{color}" stroke-width="2"{dash}/>')
        svg.append(f'<text x="{W - RIGHT + 46}" y="{ly}">{LABELS.get(op, op)}</text>')
    svg.append("</svg>")
    open(out, "w").write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
