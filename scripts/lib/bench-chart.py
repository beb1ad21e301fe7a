"""Draws scripts/bench's single-sentence runs as an SVG: inputs/s and latency against
concurrency, beside the bare ONNX Runtime session's ceilings from the same run.

    python3 scripts/lib/bench-chart.py target/bench/results.json target/bench/concurrency.svg
"""

import json
import math
import sys

WIDTH, HEIGHT = 960, 470
PANEL_W, PANEL_H = 380, 270
LEFT, TOP = 80, 64
GAP = 110
SERVER, CEILING, SINGLE, P50 = "#1f6feb", "#d1242f", "#8250df", "#6e7781"


def nice_max(value):
    """The next round number above `value` for an axis."""
    if value <= 0:
        return 1
    step = 10 ** math.floor(math.log10(value))
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * step >= value * 1.08:
            return m * step
    return 10 * step


class Panel:
    def __init__(self, x0, title, y_label, y_max, concurrencies):
        self.x0, self.title, self.y_label = x0, title, y_label
        self.y_max = nice_max(y_max)
        self.lo, self.hi = math.log2(min(concurrencies)), math.log2(max(concurrencies))
        self.concurrencies = concurrencies
        self.parts = []

    def x(self, concurrency):
        return self.x0 + (math.log2(concurrency) - self.lo) / (self.hi - self.lo) * PANEL_W

    def y(self, value):
        return TOP + PANEL_H - value / self.y_max * PANEL_H

    def axes(self):
        p = self.parts
        p.append(f'<text x="{self.x0 + PANEL_W / 2}" y="{TOP - 14}" class="title">{self.title}</text>')
        for i in range(6):
            value = self.y_max * i / 5
            y = self.y(value)
            p.append(f'<line x1="{self.x0}" y1="{y:.1f}" x2="{self.x0 + PANEL_W}" y2="{y:.1f}" class="grid"/>')
            p.append(f'<text x="{self.x0 - 8}" y="{y + 4:.1f}" class="tick" text-anchor="end">{value:g}</text>')
        for c in self.concurrencies:
            x = self.x(c)
            p.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + PANEL_H}" class="grid"/>')
            p.append(f'<text x="{x:.1f}" y="{TOP + PANEL_H + 18}" class="tick" text-anchor="middle">{c}</text>')
        p.append(f'<text x="{self.x0 + PANEL_W / 2}" y="{TOP + PANEL_H + 40}" class="label">concurrent requests (1 sentence each)</text>')
        p.append(f'<text transform="translate({self.x0 - 52},{TOP + PANEL_H / 2}) rotate(-90)" class="label">{self.y_label}</text>')

    def series(self, points, colour, label, legend_row, dashed=False):
        path = " ".join(f"{'M' if i == 0 else 'L'}{self.x(c):.1f},{self.y(v):.1f}"
                        for i, (c, v) in enumerate(points))
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        self.parts.append(f'<path d="{path}" stroke="{colour}" stroke-width="2.5" fill="none"{dash}/>')
        if not dashed:
            for c, v in points:
                self.parts.append(f'<circle cx="{self.x(c):.1f}" cy="{self.y(v):.1f}" r="3.5" fill="{colour}"/>')
        ly = TOP + PANEL_H + 66 + legend_row * 18
        self.parts.append(f'<line x1="{self.x0 + 12}" y1="{ly}" x2="{self.x0 + 36}" y2="{ly}" stroke="{colour}" stroke-width="2.5"{dash}/>')
        self.parts.append(f'<text x="{self.x0 + 42}" y="{ly + 4}" class="legend">{label}</text>')


def main(results_path, svg_path):
    results = json.load(open(results_path))
    engine, server = results["engine"], results["server"]
    runs = sorted((int(name.rsplit("_c", 1)[1]), run) for name, run in server.items()
                  if name.startswith("single_c"))
    concurrencies = [c for c, _ in runs]
    ceiling = engine["batch32_same"]["inputs_per_s"]
    single = engine["single"]["inputs_per_s"]
    single_ms = engine["single"]["p50_ms"]

    rate = Panel(LEFT, "Throughput", "inputs per second", max([ceiling] + [r["inputs_per_s"] for _, r in runs]), concurrencies)
    rate.axes()
    span = [(concurrencies[0], ceiling), (concurrencies[-1], ceiling)]
    rate.series(span, CEILING, f"bare session, batches of 32: {ceiling:.0f}/s", 0, dashed=True)
    rate.series([(concurrencies[0], single), (concurrencies[-1], single)], SINGLE,
                f"bare session, one at a time: {single:.0f}/s", 1, dashed=True)
    rate.series([(c, r["inputs_per_s"]) for c, r in runs], SERVER, "embedserve over HTTP", 2)

    latency = Panel(LEFT + PANEL_W + GAP, "Latency", "milliseconds",
                    max(r["p99_ms"] for _, r in runs), concurrencies)
    latency.axes()
    latency.series([(c, r["p99_ms"]) for c, r in runs], SERVER, "embedserve p99", 0)
    latency.series([(c, r["p50_ms"]) for c, r in runs], P50, "embedserve p50", 1)
    latency.series([(concurrencies[0], single_ms), (concurrencies[-1], single_ms)], SINGLE,
                   f"bare session, one sentence: {single_ms:.1f} ms", 2, dashed=True)

    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif">',
        "<style>.grid{stroke:#d0d7de;stroke-width:1}.tick{font-size:12px;fill:#57606a}"
        ".label{font-size:13px;fill:#24292f;text-anchor:middle}.title{font-size:15px;font-weight:bold;fill:#24292f;text-anchor:middle}"
        ".legend{font-size:12px;fill:#24292f}</style>",
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        f'<text x="{WIDTH / 2}" y="20" class="title">all-MiniLM-L6-v2 (fp32, CPU): scripts/bench, one run</text>',
        *rate.parts, *latency.parts, "</svg>",
    ]
    with open(svg_path, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
