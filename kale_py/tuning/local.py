"""Tuning on this machine: Optuna suggests, the local runner runs, the run cache reuses.

Each trial is an ordinary local run with the trial's parameter values. The first trial runs
alone, so that every step which does not read a tuned parameter is computed once and then
comes from the cache in every later trial (its cache key does not change); the rest run
``parallel`` at a time. Optuna is imported only here (the ``tune`` extra).
"""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kale_py.diagnostics import RunError, error
from kale_py.graph import Pipeline
from kale_py.local import RunOptions, new_run_id, run_local, write_json_atomic
from kale_py.tuning.space import Search, SearchParam


@dataclass(frozen=True)
class Trial:
    """One trial: its values, the objective it reached (None when its run failed)."""

    number: int
    params: dict[str, Any]
    value: float | None
    state: str  # "complete" | "failed"
    run_id: str | None
    seconds: float
    cached_steps: int
    steps: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number, "params": self.params, "value": self.value,
            "state": self.state, "run_id": self.run_id, "seconds": round(self.seconds, 3),
            "cached_steps": self.cached_steps, "steps": self.steps, "error": self.error,
        }


@dataclass(frozen=True)
class TuneResult:
    """All trials in the order they started, and the best one."""

    tune_id: str
    search: Search
    trials: tuple[Trial, ...]
    best: Trial | None
    directory: Path
    seconds: float = 0.0
    status: str = "succeeded"  # running | succeeded | failed

    def ranked(self) -> list[Trial]:
        """Complete trials best first, failed ones last."""
        done = [t for t in self.trials if t.value is not None]
        done.sort(key=lambda t: t.value if t.value is not None else 0.0,
                  reverse=self.search.maximize)
        return done + [t for t in self.trials if t.value is None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tune_id": self.tune_id,
            "status": self.status,
            "objective": self.search.objective,
            "direction": "maximize" if self.search.maximize else "minimize",
            "algorithm": self.search.algorithm,
            "trials": [t.to_dict() for t in self.trials],
            "best": self.best.to_dict() if self.best else None,
            "seconds": round(self.seconds, 3),
            "report": str(self.directory / "report.html"),
        }


def tune_local(pipeline: Pipeline, search: Search, *, jobs: int | None = None,
               run_root: Path | None = None, tune_id: str | None = None,
               progress: Callable[[str], object] = print) -> TuneResult:
    """Run ``search.trials`` trials; raises :class:`RunError` when none of them succeeds.

    ``.nb2pipe/tunes/<tune_id>/tune.json`` follows the search as it goes (``status``
    running, then succeeded or failed), for the side panel."""
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if search.maximize else "minimize",
                                sampler=_sampler(optuna, search))
    distributions = {p.name: _distribution(optuna, p, search.algorithm) for p in search.params}
    if search.algorithm == "grid":
        # Every point of the grid, queued in order (Optuna's GridSampler stops the study
        # itself, which only works inside study.optimize).
        for point in itertools.islice(_grid_points(search), search.trials):
            study.enqueue_trial(point)
    lock = threading.Lock()
    trials: list[Trial] = []
    started = time.monotonic()
    root = run_root or (pipeline.notebook.path or Path("notebook.ipynb")).resolve().parent / (
        ".nb2pipe")
    tune_id = tune_id or new_run_id()
    directory = root / "tunes" / tune_id

    def record(status: str) -> TuneResult:
        done = sorted(trials, key=lambda t: t.number)
        complete = [t for t in done if t.value is not None]
        best = ((max if search.maximize else min)(complete, key=lambda t: t.value or 0.0)
                if complete else None)
        result = TuneResult(tune_id, search, tuple(done), best, directory,
                            time.monotonic() - started, status)
        _write(result, pipeline)
        return result

    record("running")
    per_trial_jobs = jobs or max(1, _cpus() // max(1, search.parallel))

    def one() -> Trial:
        with lock:
            asked = study.ask(distributions)
            number = asked.number
        params = {name: _decode(search, name, value) for name, value in asked.params.items()}
        trial = _run_trial(pipeline, search, number, params, per_trial_jobs, run_root)
        with lock:
            if trial.value is None:
                study.tell(asked, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(asked, trial.value)
            trials.append(trial)
            record("running")
        progress(_trial_line(search, trial))
        return trial

    failed_limit = search.max_failed if search.max_failed is not None else search.trials
    if search.trials > 0:
        one()  # alone: the steps no tuned parameter reaches fill the cache for the rest
    remaining = search.trials - 1
    with ThreadPoolExecutor(max_workers=max(1, search.parallel)) as pool:
        while remaining > 0 and sum(t.value is None for t in trials) <= failed_limit:
            batch = min(remaining, max(1, search.parallel))
            list(pool.map(lambda _: one(), range(batch)))
            remaining -= batch
    result = record("succeeded" if any(t.value is not None for t in trials) else "failed")
    if result.best is None:
        first = result.trials[0] if result.trials else None
        raise RunError(error("NB603", "every trial failed"
                             + (f"; trial 0: {first.error}" if first and first.error else "")))
    return result


def _run_trial(pipeline: Pipeline, search: Search, number: int, params: dict[str, Any],
               jobs: int, run_root: Path | None) -> Trial:
    texts = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    begin = time.monotonic()
    try:
        result = run_local(pipeline, RunOptions(params=texts, progress="quiet", jobs=jobs,
                                                run_root=run_root), io.StringIO())
    except RunError as exc:
        return Trial(number, params, None, "failed", None, time.monotonic() - begin, 0,
                     len(pipeline.steps), "; ".join(d.message for d in exc.diagnostics))
    seconds = time.monotonic() - begin
    cached = sum(status == "cached" for status in result.steps.values())
    value = result.metrics.get(search.objective)
    if result.status != "succeeded" or not isinstance(value, (int, float)) or isinstance(
            value, bool):
        why = (result.failed[0][1].describe() if result.failed
               else f"the run {result.status}" if result.status != "succeeded"
               else f"metric {search.objective!r} is {value!r}, not a number")
        return Trial(number, params, None, "failed", result.run_id, seconds, cached,
                     len(result.steps), why)
    return Trial(number, params, float(value), "complete", result.run_id, seconds, cached,
                 len(result.steps))


def _grid_points(search: Search) -> Iterator[dict[str, Any]]:
    names = [p.name for p in search.params]
    for values in itertools.product(*([_encode(v) for v in p.grid()] for p in search.params)):
        yield dict(zip(names, values, strict=True))


def _sampler(optuna: Any, search: Search) -> Any:
    if search.algorithm in ("grid", "random"):
        return optuna.samplers.RandomSampler(seed=search.seed)
    return optuna.samplers.TPESampler(seed=search.seed)


def _distribution(optuna: Any, p: SearchParam, algorithm: str) -> Any:
    d = optuna.distributions
    if algorithm == "grid" or not p.is_range:
        values = p.grid() if algorithm == "grid" else list(p.choices)
        return d.CategoricalDistribution([_encode(v) for v in values])
    assert p.low is not None and p.high is not None
    if p.type == "int":
        return d.IntDistribution(int(p.low), int(p.high), log=p.log,
                                 step=int(p.step) if p.step else 1)
    return d.FloatDistribution(p.low, p.high, log=p.log, step=p.step)


def _encode(value: Any) -> Any:
    """Optuna's choices are scalars: lists and dicts travel as JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _decode(search: Search, name: str, value: Any) -> Any:
    param = next(p for p in search.params if p.name == name)
    if param.type in ("list", "dict") and isinstance(value, str):
        return json.loads(value)
    if param.type == "int" and isinstance(value, float):
        return int(value)
    return value


def _trial_line(search: Search, trial: Trial) -> str:
    values = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    outcome = (f"{search.objective}={_short(trial.value)}" if trial.value is not None
               else f"failed: {trial.error}")
    return (f"trial {trial.number}: {values} -> {outcome} "
            f"({trial.seconds:.1f} s, {trial.cached_steps}/{trial.steps} steps cached)")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if isinstance(value, str) else json.dumps(value)


def _write(result: TuneResult, pipeline: Pipeline) -> None:
    from kale_py.tuning.report import tune_report_html

    result.directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(result.directory / "tune.json",
                      {**result.to_dict(), "notebook": str(pipeline.notebook.path)})
    html = tune_report_html(result, pipeline.notebook.name)
    tmp = result.directory / ".report.html.tmp"
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(result.directory / "report.html")


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise RunError(error("NB604", "tuning needs Optuna: pip install 'kale_py[tune]'")) from None
    return optuna
