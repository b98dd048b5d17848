"""A tuning's report: the trials as a table, best first, and a plot of the objective.

Plain HTML with an inline SVG: it opens anywhere, needs no plotting library, and is safe to
show in the panel's sandboxed report tab.
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kale_py.tuning.local import TuneResult

WIDTH, HEIGHT, PAD = 560, 240, 40


def tune_report_html(result: TuneResult, notebook: str) -> str:
    """The whole report page."""
    search = result.search
    direction = "maximize" if search.maximize else "minimize"
    names = [p.name for p in search.params]
    rows = []
    for trial in result.ranked():
        cells = [str(trial.number),
                 _fmt(trial.value) if trial.value is not None else "failed",
                 *(_fmt(trial.params.get(n)) for n in names),
                 f"{trial.cached_steps}/{trial.steps}", f"{trial.seconds:.1f} s",
                 trial.run_id or ""]
        best = result.best is not None and trial.number == result.best.number
        rows.append(f'<tr class="{"best" if best else ""}">'
                    + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in
                     ["trial", search.objective, *names, "cached steps", "time", "run"])
    best_text = (f"best {html.escape(_fmt(result.best.value))} at trial {result.best.number}"
                 if result.best else "no trial succeeded yet" if result.status == "running"
                 else "no trial succeeded")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Tuning {html.escape(notebook)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
tr.best {{ background: #e6f4ea; font-weight: bold; }}
svg .point {{ fill: #1a73e8; }} svg .best-line {{ fill: none; stroke: #188038; stroke-width: 2; }}
svg .axis {{ stroke: #888; }} svg text {{ font-size: 11px; fill: #444; }}
</style></head><body>
<h1>Tuning {html.escape(notebook)}</h1>
<p>{html.escape(search.objective)} ({direction}), {html.escape(search.algorithm)} search,
{len(result.trials)} trials in {result.seconds:.1f} s: {best_text}.</p>
{_plot(result)}
<table id="trials"><thead><tr>{header}</tr></thead><tbody>
{"".join(rows)}
</tbody></table>
<script type="application/json" id="tune-data">{_json_for_script(result.to_dict())}</script>
</body></html>
"""


def _plot(result: TuneResult) -> str:
    """The objective of each trial (points) and the best so far (a step line)."""
    points = [(t.number, t.value) for t in result.trials if t.value is not None]
    if not points:
        return ""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points if p[1] is not None]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = min(ys), max(ys)
    if y0 == y1:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def sx(x: float) -> float:
        return PAD + (x - x0) / (x1 - x0) * (WIDTH - 2 * PAD)

    def sy(y: float) -> float:
        return HEIGHT - PAD - (y - y0) / (y1 - y0) * (HEIGHT - 2 * PAD)

    best: float | None = None
    line = []
    for x, y in points:
        assert y is not None
        better = best is None or (y > best if result.search.maximize else y < best)
        best = y if better else best
        assert best is not None
        line.append(f"{sx(x):.1f},{sy(best):.1f}")
    dots = "".join(f'<circle class="point" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4">'
                   f"<title>trial {x}: {_fmt(y)}</title></circle>"
                   for x, y in points if y is not None)
    return (f'<svg id="plot" width="{WIDTH}" height="{HEIGHT}" role="img" '
            f'aria-label="objective by trial">'
            f'<line class="axis" x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" '
            f'y2="{HEIGHT - PAD}"/><line class="axis" x1="{PAD}" y1="{PAD}" x2="{PAD}" '
            f'y2="{HEIGHT - PAD}"/>'
            f'<text x="{PAD}" y="{PAD - 8}">{html.escape(_fmt(y1))}</text>'
            f'<text x="{PAD}" y="{HEIGHT - 8}">{html.escape(_fmt(y0))} · trial →</text>'
            f'<polyline class="best-line" points="{" ".join(line)}"/>{dots}</svg>')


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if isinstance(value, str) else json.dumps(value)


def _json_for_script(data: Any) -> str:
    # "</" would end the script element early
    return json.dumps(data).replace("</", "<\\/")
