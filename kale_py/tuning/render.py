"""A tuning's result as text for the terminal: the trials best first."""

from __future__ import annotations

import json
from typing import Any


def tune_to_text(result: dict[str, Any]) -> str:
    """The table ``nb2pipe tune`` prints (``result`` is ``TuneResult.to_dict()``)."""
    trials = result["trials"]
    names = list(trials[0]["params"]) if trials else []
    maximize = result["direction"] == "maximize"
    done = sorted((t for t in trials if t["value"] is not None),
                  key=lambda t: t["value"], reverse=maximize)
    ranked = done + [t for t in trials if t["value"] is None]
    header = ["trial", result["objective"], *names, "cached", "time"]
    rows = [[str(t["number"]), _fmt(t["value"]) if t["value"] is not None else "failed",
             *(_fmt(t["params"][n]) for n in names), f"{t['cached_steps']}/{t['steps']}",
             f"{t['seconds']:.1f} s"] for t in ranked]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True))
             for r in [header, *rows]]
    best = result["best"]
    title = (f"{result['objective']} ({result['direction']}), {result['algorithm']} search, "
             f"{len(trials)} trials in {result['seconds']:.1f} s: best {_fmt(best['value'])} "
             f"at trial {best['number']}")
    failures = [f"trial {t['number']} failed: {t['error']}" for t in ranked if t["error"]]
    return "\n".join([title, *lines, *failures, f"report: {result['report']}"])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if isinstance(value, str) else json.dumps(value)
